// A multilayer perceptron's backprop that speaks bpref-wire version 1 (docs/protocol.md).
//
//   bpref check --exec "node examples/js/mlp.js"
//   bpref check --exec "node examples/js/mlp.js --planted-bug"   (drops f' of the output layer)
//
// Node.js, no packages. For each case (W_l of shape (n_l, n_{l-1}), or its transpose with
// layout in_out; rows of x and t are examples):
//
//   forward   z_l = a_{l-1} W_l^T + b_l,  a_l = f_l(z_l),  a_0 = x
//   backward  delta_L = dC/dy * f'_L(z_L),  delta_{l-1} = (delta_l W_l) * f'_{l-1}(z_{l-1})
//   grads     dC/dW_l = delta_l^T a_{l-1},  dC/db_l = sum over the batch of delta_l
//
// with C = sum_k (y_k - t_k)^2 (squared_error) or half of it (half_squared_error), summed or
// averaged over the batch. The arithmetic is in float64; results are sent in the case's dtype.
"use strict";

const PLANTED_BUG = process.argv.includes("--planted-bug");
const SIZE = { float64: 8, float32: 4 };

const f = {
  identity: (z) => z,
  relu: (z) => (z > 0 ? z : 0),
  tanh: Math.tanh,
  sigmoid: (z) => 1 / (1 + Math.exp(-z)),
};
// f'(z) from z and a = f(z): relu'(0) = 0, tanh' = 1 - a^2, sigmoid' = a (1 - a)
const df = {
  identity: () => 1,
  relu: (z) => (z > 0 ? 1 : 0),
  tanh: (z, a) => 1 - a * a,
  sigmoid: (z, a) => a * (1 - a),
};

function decode(buf, dtype) {
  const n = buf.length / SIZE[dtype], out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = dtype === "float32" ? buf.readFloatLE(4 * i) : buf.readDoubleLE(8 * i);
  return out;
}

function encode(values, dtype) {
  const buf = Buffer.alloc(values.length * SIZE[dtype]);
  values.forEach((v, i) => (dtype === "float32" ? buf.writeFloatLE(Math.fround(v), 4 * i) : buf.writeDoubleLE(v, 8 * i)));
  return buf;
}

function send(header, arrays = []) {
  header.arrays = arrays.map(([name, shape]) => ({ name, dtype: header.dtype, shape }));
  const dtype = header.dtype;
  delete header.dtype;
  process.stdout.write(JSON.stringify(header) + "\n");
  for (const [, , values] of arrays) process.stdout.write(encode(values, dtype));
}

function runCase(h, arrays) {
  const n = h.sizes, L = h.activations.length, B = h.batch, inOut = h.layout === "in_out";
  const bad = h.activations.find((a) => !(a in f));
  if (bad) return send({ type: "error", id: h.id, message: `unsupported activation ${bad}` });
  const half = h.loss === "half_squared_error";
  if (!half && h.loss !== "squared_error") return send({ type: "error", id: h.id, message: `unsupported loss ${h.loss}` });
  // W_l(j, i) of the (n_l, n_{l-1}) matrix, whichever layout it came in
  const W = (l, j, i) => arrays[`W${l}`][inOut ? i * n[l] + j : j * n[l - 1] + i];
  const b = (l, j) => (h.bias ? arrays[`b${l}`][j] : 0);
  const z = [null], a = [arrays.x], d = [];
  for (let l = 1; l <= L; l++) { // forward
    const zl = new Float64Array(B * n[l]), al = new Float64Array(B * n[l]);
    for (let s = 0; s < B; s++)
      for (let j = 0; j < n[l]; j++) {
        let acc = b(l, j);
        for (let i = 0; i < n[l - 1]; i++) acc += W(l, j, i) * a[l - 1][s * n[l - 1] + i];
        zl[s * n[l] + j] = acc;
        al[s * n[l] + j] = f[h.activations[l - 1]](acc);
      }
    z.push(zl);
    a.push(al);
  }
  const scale = h.reduction === "mean" ? 1 / B : 1, t = arrays.t;
  let C = 0;
  d[L] = new Float64Array(B * n[L]);
  for (let q = 0; q < B * n[L]; q++) { // delta_L = dC/dy * f'_L(z_L)
    const r = a[L][q] - t[q];
    C += (half ? 0.5 : 1) * r * r * scale;
    const fprime = PLANTED_BUG ? 1 : df[h.activations[L - 1]](z[L][q], a[L][q]);
    d[L][q] = (half ? r : 2 * r) * scale * fprime;
  }
  for (let l = L; l > 1; l--) { // delta_{l-1} = (delta_l W_l) * f'_{l-1}(z_{l-1})
    d[l - 1] = new Float64Array(B * n[l - 1]);
    for (let s = 0; s < B; s++)
      for (let i = 0; i < n[l - 1]; i++) {
        let acc = 0;
        for (let j = 0; j < n[l]; j++) acc += d[l][s * n[l] + j] * W(l, j, i);
        const q = s * n[l - 1] + i;
        d[l - 1][q] = acc * df[h.activations[l - 2]](z[l - 1][q], a[l - 1][q]);
      }
  }
  const out = [];
  for (let l = 1; l <= L; l++) { // dC/dW_l = delta_l^T a_{l-1}, dC/db_l = sum_s delta_l
    const dW = new Float64Array(n[l] * n[l - 1]), db = new Float64Array(n[l]);
    for (let s = 0; s < B; s++)
      for (let j = 0; j < n[l]; j++) {
        const dj = d[l][s * n[l] + j];
        db[j] += dj;
        for (let i = 0; i < n[l - 1]; i++) dW[inOut ? i * n[l] + j : j * n[l - 1] + i] += dj * a[l - 1][s * n[l - 1] + i];
      }
    out.push([`dW${l}`, inOut ? [n[l - 1], n[l]] : [n[l], n[l - 1]], dW]);
    if (h.bias) out.push([`db${l}`, [n[l]], db]);
  }
  out.push(["loss", [], [C]]);
  send({ type: "grads", id: h.id, dtype: h.dtype }, out);
}

let pending = Buffer.alloc(0), header = null, greeted = false;

function step() {
  for (;;) {
    if (header === null) {
      const end = pending.indexOf(10);
      if (end < 0) return;
      header = JSON.parse(pending.subarray(0, end).toString("utf8"));
      header.need = (header.arrays || []).reduce((s, e) => s + SIZE[e.dtype] * e.shape.reduce((p, k) => p * k, 1), 0);
      pending = pending.subarray(end + 1);
    }
    if (pending.length < header.need) return;
    const h = header, arrays = {};
    let at = 0;
    for (const e of h.arrays || []) {
      const bytes = SIZE[e.dtype] * e.shape.reduce((p, k) => p * k, 1);
      arrays[e.name] = decode(pending.subarray(at, at + bytes), e.dtype);
      at += bytes;
    }
    pending = pending.subarray(h.need);
    header = null;
    if (!greeted && h.type === "hello") {
      greeted = true;
      send({
        type: "hello", version: 1, name: "examples/js/mlp.js", activations: Object.keys(f),
        losses: ["squared_error", "half_squared_error"], dtypes: ["float64", "float32"],
        layouts: ["out_in", "in_out"], reductions: ["mean", "sum"], no_bias: true,
      });
    } else if (h.type === "bye") {
      process.exit(0);
    } else if (h.type === "case") {
      runCase(h, arrays);
    } else {
      process.stderr.write(`mlp.js: unexpected message ${h.type}\n`);
      process.exit(2);
    }
  }
}

process.stdin.on("data", (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  step();
});
