// Fixture of memprof/tests/v8_names.rs: the main thread parks (Atomics.wait, a futex) inside
// named JS functions — a plain function, a class method, an arrow function, a timer callback —
// so the test can read their frames out of V8's memory while node runs with no flags.
// On the first park it prints V8's own stack trace (one JSON line): the truth the test compares
// its names, files and lines with. Taking it also makes V8 collect these functions' source
// positions, as any error logged by an application would.
'use strict';
const PARK_MS = +(process.env.PARK_MS || 5000);
const cell = new Int32Array(new SharedArrayBuffer(4));
let reported = false;
function report(err) {
  reported = true;
  process.stdout.write(JSON.stringify(err.stack.split('\n').slice(1)) + '\n');
  return PARK_MS;
}
function leakyHandler(ms) {
  Atomics.wait(cell, 0, 0, reported ? ms : report(new Error('where')));
}
class Store {
  remember(ms) {
    leakyHandler(ms);
  }
}
const store = new Store();
const viaArrow = (ms) => store.remember(ms);
setInterval(function tick() {
  viaArrow(PARK_MS);
}, 10);
