//! A multilayer perceptron's backprop that speaks bpref-wire version 1 (docs/protocol.md).
//!
//!   rustc -O -o mlp examples/rust/mlp.rs && bpref check --exec ./mlp
//!   rustc -O --cfg planted_bug -o mlp_bug examples/rust/mlp.rs   (divides a mean by n_0, not B)
//!
//! No crates. For each case (W_l of shape (n_l, n_{l-1}), or its transpose with layout in_out;
//! rows of x and t are examples):
//!
//!   forward   z_l = a_{l-1} W_l^T + b_l,  a_l = f_l(z_l),  a_0 = x
//!   backward  delta_L = dC/dy * f'_L(z_L),  delta_{l-1} = (delta_l W_l) * f'_{l-1}(z_{l-1})
//!   grads     dC/dW_l = delta_l^T a_{l-1},  dC/db_l = sum over the batch of delta_l
//!
//! with C = sum_k (y_k - t_k)^2 (squared_error) or half of it (half_squared_error), summed or
//! averaged over the batch. The arithmetic is in f64; results are sent in the case's dtype.
#![allow(unexpected_cfgs)]

use std::io::{self, BufRead, BufReader, Read, Write};

/// The text after `"key":` in a header (bpref writes compact JSON, the "arrays" list last).
fn find<'a>(h: &'a str, key: &str) -> Result<&'a str, String> {
  let pat = format!("\"{}\":", key);
  h.find(&pat).map(|i| &h[i + pat.len()..]).ok_or(format!("the header has no key {}", key))
}

fn find_str(h: &str, key: &str) -> Result<String, String> {
  let v = find(h, key)?.strip_prefix('"').ok_or(format!("{} is not a string", key))?;
  Ok(v[..v.find('"').unwrap_or(0)].to_string())
}

fn find_int(h: &str, key: &str) -> Result<usize, String> {
  let v = find(h, key)?;
  let end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
  v[..end].parse().map_err(|_| format!("{} is not an integer", key))
}

/// The items of a JSON list of numbers or names, as strings without quotes.
fn find_list(h: &str, key: &str) -> Result<Vec<String>, String> {
  let v = find(h, key)?;
  let inner = &v[1..v.find(']').ok_or(format!("{} is not a list", key))?];
  Ok(inner.split(',').filter(|s| !s.is_empty()).map(|s| s.trim_matches('"').to_string()).collect())
}

fn read_array(r: &mut impl Read, n: usize, f32_: bool) -> io::Result<Vec<f64>> {
  let size = if f32_ { 4 } else { 8 };
  let mut buf = vec![0u8; n * size];
  r.read_exact(&mut buf)?;
  Ok(buf.chunks(size).map(|c| if f32_ {
    f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64
  } else {
    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
  }).collect())
}

fn put(out: &mut Vec<u8>, a: &[f64], f32_: bool) {
  for &v in a {
    if f32_ { out.extend_from_slice(&(v as f32).to_le_bytes()) } else { out.extend_from_slice(&v.to_le_bytes()) }
  }
}

fn f(act: &str, z: f64) -> f64 {
  match act {
    "relu" => if z > 0.0 { z } else { 0.0 },
    "tanh" => z.tanh(),
    "sigmoid" => 1.0 / (1.0 + (-z).exp()),
    _ => z,
  }
}

/// f'(z) from z and a = f(z): relu'(0) = 0, tanh' = 1 - a^2, sigmoid' = a (1 - a).
fn df(act: &str, z: f64, a: f64) -> f64 {
  match act {
    "relu" => if z > 0.0 { 1.0 } else { 0.0 },
    "tanh" => 1.0 - a * a,
    "sigmoid" => a * (1.0 - a),
    _ => 1.0,
  }
}

/// One case's reply: (header line, payload), or an error message for an error reply.
fn run_case(h: &str, r: &mut impl Read) -> Result<(String, Vec<u8>), (usize, String)> {
  let bad = |e: String| (0usize, e);
  let id = find_int(h, "id").map_err(bad)?;
  let dtype = find_str(h, "dtype").map_err(bad)?;
  let in_out = find_str(h, "layout").map_err(bad)? == "in_out";
  let mean = find_str(h, "reduction").map_err(bad)? == "mean";
  let loss = find_str(h, "loss").map_err(bad)?;
  let acts = find_list(h, "activations").map_err(bad)?;
  let n: Vec<usize> = find_list(h, "sizes").map_err(bad)?.iter().map(|s| s.parse().unwrap_or(0)).collect();
  let b = find_int(h, "batch").map_err(bad)?;
  let bias = find(h, "bias").map_err(bad)?.starts_with("true");
  let f32_ = dtype == "float32";
  let l_ = acts.len();
  let io_err = |e: io::Error| (id, format!("stdin ended inside an array: {}", e));
  let mut w = Vec::new();
  let mut bs = Vec::new();
  for l in 1..=l_ {
    w.push(read_array(r, n[l] * n[l - 1], f32_).map_err(io_err)?);
    bs.push(if bias { read_array(r, n[l], f32_).map_err(io_err)? } else { vec![0.0; n[l]] });
  }
  let x = read_array(r, b * n[0], f32_).map_err(io_err)?;
  let t = read_array(r, b * n[l_], f32_).map_err(io_err)?;
  if let Some(a) = acts.iter().find(|a| !["identity", "relu", "tanh", "sigmoid"].contains(&a.as_str())) {
    return Err((id, format!("unsupported activation {}", a)));
  }
  let half = loss == "half_squared_error";
  if !half && loss != "squared_error" {
    return Err((id, format!("unsupported loss {}", loss)));
  }
  // W_l(j, i) of the (n_l, n_{l-1}) matrix, whichever layout it came in
  let wl = |l: usize, j: usize, i: usize| if in_out { w[l - 1][i * n[l] + j] } else { w[l - 1][j * n[l - 1] + i] };
  let mut z = vec![vec![]; l_ + 1];
  let mut a = vec![x; 1];
  for l in 1..=l_ {  // forward
    let (mut zl, mut al) = (vec![0.0; b * n[l]], vec![0.0; b * n[l]]);
    for s in 0..b {
      for j in 0..n[l] {
        let mut acc = bs[l - 1][j];
        for i in 0..n[l - 1] { acc += wl(l, j, i) * a[l - 1][s * n[l - 1] + i]; }
        zl[s * n[l] + j] = acc;
        al[s * n[l] + j] = f(&acts[l - 1], acc);
      }
    }
    z[l] = zl;
    a.push(al);
  }
  let divisor = if cfg!(planted_bug) { n[0] } else { b };
  let scale = if mean { 1.0 / divisor as f64 } else { 1.0 };
  let mut cost = 0.0;
  let mut d = vec![vec![]; l_ + 1];
  d[l_] = (0..b * n[l_]).map(|q| {  // delta_L = dC/dy * f'_L(z_L)
    let r = a[l_][q] - t[q];
    cost += (if half { 0.5 } else { 1.0 }) * r * r * scale;
    let dc_dy = if half { r } else { 2.0 * r } * scale;
    dc_dy * df(&acts[l_ - 1], z[l_][q], a[l_][q])
  }).collect();
  for l in (2..=l_).rev() {  // delta_{l-1} = (delta_l W_l) * f'_{l-1}(z_{l-1})
    let mut dl = vec![0.0; b * n[l - 1]];
    for s in 0..b {
      for i in 0..n[l - 1] {
        let acc: f64 = (0..n[l]).map(|j| d[l][s * n[l] + j] * wl(l, j, i)).sum();
        let q = s * n[l - 1] + i;
        dl[q] = acc * df(&acts[l - 2], z[l - 1][q], a[l - 1][q]);
      }
    }
    d[l - 1] = dl;
  }
  let mut entries = Vec::new();
  let mut payload = Vec::new();
  for l in 1..=l_ {  // dC/dW_l = delta_l^T a_{l-1}, dC/db_l = sum_s delta_l
    let (mut dw, mut db) = (vec![0.0; n[l] * n[l - 1]], vec![0.0; n[l]]);
    for s in 0..b {
      for j in 0..n[l] {
        let dj = d[l][s * n[l] + j];
        db[j] += dj;
        for i in 0..n[l - 1] {
          dw[if in_out { i * n[l] + j } else { j * n[l - 1] + i }] += dj * a[l - 1][s * n[l - 1] + i];
        }
      }
    }
    let (rows, cols) = if in_out { (n[l - 1], n[l]) } else { (n[l], n[l - 1]) };
    entries.push(format!("{{\"name\":\"dW{}\",\"dtype\":\"{}\",\"shape\":[{},{}]}}", l, dtype, rows, cols));
    put(&mut payload, &dw, f32_);
    if bias {
      entries.push(format!("{{\"name\":\"db{}\",\"dtype\":\"{}\",\"shape\":[{}]}}", l, dtype, n[l]));
      put(&mut payload, &db, f32_);
    }
  }
  entries.push(format!("{{\"name\":\"loss\",\"dtype\":\"{}\",\"shape\":[]}}", dtype));
  put(&mut payload, &[cost], f32_);
  Ok((format!("{{\"type\":\"grads\",\"id\":{},\"arrays\":[{}]}}\n", id, entries.join(",")), payload))
}

fn main() -> io::Result<()> {
  let mut input = BufReader::new(io::stdin().lock());
  let mut out = io::stdout().lock();
  let mut line = String::new();
  input.read_line(&mut line)?;
  if !line.contains("\"type\":\"hello\"") {
    eprintln!("mlp.rs: expected bpref's hello");
    std::process::exit(2);
  }
  out.write_all(b"{\"type\":\"hello\",\"version\":1,\"name\":\"examples/rust/mlp.rs\",\
    \"activations\":[\"identity\",\"relu\",\"tanh\",\"sigmoid\"],\
    \"losses\":[\"squared_error\",\"half_squared_error\"],\"dtypes\":[\"float64\",\"float32\"],\
    \"layouts\":[\"out_in\",\"in_out\"],\"reductions\":[\"mean\",\"sum\"],\"no_bias\":true}\n")?;
  out.flush()?;
  loop {
    line.clear();
    if input.read_line(&mut line)? == 0 || line.contains("\"type\":\"bye\"") {
      return Ok(());
    }
    match run_case(&line, &mut input) {
      Ok((head, payload)) => {
        out.write_all(head.as_bytes())?;
        out.write_all(&payload)?;
      }
      Err((id, message)) => {
        writeln!(out, "{{\"type\":\"error\",\"id\":{},\"message\":\"{}\",\"arrays\":[]}}", id, message)?;
      }
    }
    out.flush()?;
  }
}
