//! `weft tag set|list|remove`: revision tags, as `istioctl tag` and the sail operator's
//! `IstioRevisionTag` keep them. A tag is a stable name (`prod-stable`) for a revision
//! (`1-24-0`): workloads labelled `istio.io/rev: prod-stable` belong to whichever revision
//! the tag points to, and re-pointing it moves them all (each control plane drops the
//! proxies that are no longer its own). Tags live in the configuration directory the
//! control planes watch, one `IstioRevisionTag` per file (`tag-<name>.yaml`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Point a tag at a revision (creating it, or moving it and its workloads).
    Set {
        /// The tag (`prod-stable`; `default` is what workloads without a label use).
        #[arg(value_parser = crate::revision_name)]
        tag: String,
        /// The revision it points to.
        #[arg(long, value_parser = crate::revision_name)]
        revision: String,
        /// The configuration directory the control planes watch.
        #[arg(short = 'f', long = "config")]
        dir: PathBuf,
    },
    /// List the tags and the revisions they point to.
    List {
        /// The configuration directory the control planes watch.
        #[arg(short = 'f', long = "config")]
        dir: PathBuf,
    },
    /// Remove a tag.
    Remove {
        /// The tag.
        tag: String,
        /// The configuration directory the control planes watch.
        #[arg(short = 'f', long = "config")]
        dir: PathBuf,
    },
}

/// The tags defined under `dir`: (tag, revision, file).
pub(crate) fn tags(dir: &Path) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
    let parsed = weft_config::load(&[dir.to_path_buf()])?;
    Ok(weft_controlplane::snapshot::revision_tags(&parsed.resources)
        .map(|(r, target)| (r.name().to_owned(), target.to_owned(), PathBuf::from(&*r.origin.file)))
        .collect())
}

fn file_of(dir: &Path, tag: &str) -> PathBuf {
    dir.join(format!("tag-{tag}.yaml"))
}

pub fn run(args: TagArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Set { tag, revision, dir } => {
            let file = set(&dir, &tag, &revision)?;
            println!("tag {tag} → revision {revision} ({})", file.display());
        }
        Action::List { dir } => {
            let mut list = tags(&dir)?;
            list.sort();
            println!("{:<20} REVISION", "TAG");
            for (tag, revision, _) in list {
                println!("{tag:<20} {revision}");
            }
        }
        Action::Remove { tag, dir } => {
            let file = file_of(&dir, &tag);
            match tags(&dir)?.into_iter().find(|(t, _, _)| *t == tag) {
                None => anyhow::bail!("no tag {tag} in {}", dir.display()),
                Some((_, _, f)) if !same(&f, &file) => {
                    anyhow::bail!("tag {tag} is defined in {}; remove it there", f.display())
                }
                Some(_) => std::fs::remove_file(&file)?,
            }
            println!("tag {tag} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Points `tag` at `revision` (creating it), in `tag-<tag>.yaml` under `dir`; returns
/// the file.
pub(crate) fn set(dir: &Path, tag: &str, revision: &str) -> anyhow::Result<PathBuf> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory: tags live in the directory the control planes watch", dir.display());
    }
    let file = file_of(dir, tag);
    if let Some((_, _, other)) = tags(dir)?.into_iter().find(|(t, _, f)| t == tag && !same(f, &file)) {
        anyhow::bail!("tag {tag} is defined in {}; change it there", other.display());
    }
    let yaml = format!(
        "# Written by weft: workloads labelled istio.io/rev: {tag} belong to revision {revision}.\n\
         apiVersion: sailoperator.io/v1\nkind: IstioRevisionTag\nmetadata:\n  name: {tag}\nspec:\n  targetRef:\n    kind: IstioRevision\n    name: {revision}\n"
    );
    // Written whole, then renamed: a watching control plane never reads half a file.
    let tmp = dir.join(format!(".tag-{tag}.yaml.tmp"));
    std::fs::write(&tmp, yaml)?;
    std::fs::rename(&tmp, &file)?;
    Ok(file)
}

fn same(a: &Path, b: &Path) -> bool {
    a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b)
}
