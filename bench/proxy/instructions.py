#!/usr/bin/env python3
"""Instructions per request in user space, for one weft proxy, counted by callgrind.

The same client -> proxy A -> proxy B -> server path as run.py (same server, control
plane, Istio YAML and h2load), but proxy A runs under `valgrind --tool=callgrind`, and
the figure is the instructions it executes per request over a fixed number of requests
after a warm-up. Unlike CPU seconds, the count barely moves between runs or with what
else the machine is doing, so two builds can be compared on a shared, noisy machine:

    python3 bench/proxy/instructions.py --weft target/release/weft --weft other/weft

Kernel work (system calls, TCP on loopback, scheduling) is not counted: see run.py for
whole-process CPU. `--top N` prints the N functions with the most inclusive cost, and
`--keep DIR` keeps each callgrind profile for `callgrind_annotate`.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

# Warm-up requests before counting: connections, pools, metric series and caches exist.
WARMUP = 300


def wrapper(directory, weft, profile):
    """A script that starts proxy A (the client's) under callgrind and proxy B as is."""
    script = directory / "weft-callgrind"
    script.write_text(f"""#!/bin/sh
case "$*" in
  *"~client."*) exec valgrind --tool=callgrind --callgrind-out-file={profile} {weft} "$@" ;;
  *) exec {weft} "$@" ;;
esac
""")
    script.chmod(0o755)
    return script


def h2load(tools, protocol, requests):
    ip, port = bench.PROXY_A_IP, bench.PROXY_PORT
    argv = [tools.h2load, "-t", "1", "-c", "4", "-m", "1", "-n", str(requests), "--connect-to", f"{ip}:{port}"]
    if protocol == "h1":
        argv.append("--h1")
    return argv + [f"http://{bench.AUTHORITY}{bench.URL_PATH}"]


def count(tools, weft, protocol, requests, workdir, top):
    """Instructions per request of proxy A, and the profile's path."""
    directory = bench.make_dir(workdir / f"{Path(weft).parent.name}-{protocol}")
    profile = directory / "callgrind.out"
    processes = bench.Processes(directory)
    try:
        bench.start_server(tools, processes, directory)
        bench.start_weft_pair(tools, processes, directory, weft=wrapper(directory, weft, profile))
        subprocess.run(h2load(tools, protocol, WARMUP), capture_output=True, check=True)
        subprocess.run(["callgrind_control", "--zero"], capture_output=True, check=True)
        out = subprocess.run(h2load(tools, protocol, requests), capture_output=True, text=True, check=True).stdout
        done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
        if not done or int(done.group(1)) != requests:
            raise bench.ProcessFailed(f"h2load did not complete {requests} requests:\n{out}")
        subprocess.run(["callgrind_control", "--dump=measured"], capture_output=True, check=True)
        time.sleep(1)
    finally:
        processes.stop()
    dumps = sorted(directory.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
    measured = next((d for d in dumps if "Trigger: dump measured" in d.read_text(errors="replace")[:4000]), None)
    if measured is None:
        raise bench.ProcessFailed(f"callgrind wrote no measured profile in {directory}")
    total = int(re.search(r"^summary: (\d+)", measured.read_text(errors="replace"), re.M).group(1))
    if top:
        annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(measured)],
                                   capture_output=True, text=True).stdout
        rows = [line for line in annotated.splitlines() if re.match(r"\s*[\d,]+ \(", line)]
        for line in rows[:top]:
            print("   ", re.sub(r" \[/.*\]$", "", line)[:150])
    return total / requests, measured


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weft", action="append", help="a weft binary (repeat to compare builds); "
                        "default target/release/weft")
    parser.add_argument("--protocols", default="h1,h2", help="h1, h2 or both (client to proxy A)")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted per run")
    parser.add_argument("--top", type=int, default=0, help="print the N costliest functions (inclusive)")
    parser.add_argument("--keep", help="a directory to copy each measured profile to")
    args = parser.parse_args()
    binaries = args.weft or [str(bench.REPO / "target" / "release" / "weft")]
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    tools = bench.check_tools(binaries[0])
    workdir = Path(tempfile.mkdtemp(prefix="weft-instructions-"))
    workdir.chmod(0o755)  # nginx's workers read the server's files as another user
    print(f"weft instructions per request, proxy A under callgrind, {args.requests} requests "
          f"over 4 connections after {WARMUP} to warm up")
    for weft in binaries:
        for protocol in args.protocols.split(","):
            per_request, profile = count(tools, weft, protocol, args.requests, workdir, args.top)
            print(f"{weft}  {bench.PROTOCOLS[protocol]}: {per_request:,.0f} instructions/request")
            if args.keep:
                keep = bench.make_dir(Path(args.keep))
                shutil.copy(profile, keep / f"{Path(weft).parent.name}-{protocol}.callgrind")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
