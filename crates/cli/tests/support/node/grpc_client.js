// Node's proxyless gRPC client (@grpc/grpc-js-xds) for weft's tests: the same command
// line and output as grpc_echo.py's client. Calls /weft.test.Echo/Call with raw bytes.
//   node grpc_client.js client --target xds:///host:port [--count N] [--interval S] [--metadata k=v]
'use strict';
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const args = process.argv.slice(3);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const target = opt('--target');
const count = Number(opt('--count', '1'));
const interval = Number(opt('--interval', '0'));
const metadata = new grpc.Metadata();
args.forEach((a, i) => {
  if (a === '--metadata') {
    const [k, v] = args[i + 1].split('=');
    metadata.add(k, v);
  }
});

const client = new grpc.Client(target, grpc.credentials.createInsecure());
const identity = (x) => x;

function call() {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + 20000);
    client.makeUnaryRequest('/weft.test.Echo/Call', identity, identity, Buffer.from('hi'), metadata, { deadline }, (err, reply) => {
      if (err) {
        const code = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
        console.log(JSON.stringify({ ok: false, code, detail: err.details }));
      } else {
        console.log(JSON.stringify({ ok: true, name: reply.toString() }));
      }
      resolve();
    });
  });
}

(async () => {
  for (let i = 0; interval > 0 || i < count; i++) {
    await call();
    if (interval > 0) await new Promise((r) => setTimeout(r, interval * 1000));
  }
  client.close();
  process.exit(0);
})();
