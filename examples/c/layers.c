/* Five layers' backward passes, written the way llm.c writes them, that speak bpref-wire
 * version 2 (docs/protocol.md): bpref sends one op at a time and checks the gradients.
 *
 *   cc -O2 -o layers examples/c/layers.c -lm
 *   bpref check --op layernorm --exec ./layers
 *   bpref check --op dense --exec ./layers                      (llm.c's matmul: W is (OC, C))
 *   bpref check --op activation --op-name gelu_tanh --exec ./layers
 *   bpref check --op attention --exec ./layers                  (llm.c's qkv (B, T, 3C), layout llmc)
 *   bpref check --op embedding --exec ./layers                  (llm.c's encoder: wte and wpe)
 *
 * A planted bug, chosen when compiling, for each (the check fails and names it):
 *   -DBUG_LAYERNORM_MEAN     dx without its -mean(dxhat) term        (mean_term_missing)
 *   -DBUG_MATMUL_DB          db is the first row of dout, not a sum   (batch_sum_missing)
 *   -DBUG_GELU               gelu' with k z^2 where 3 k z^2 belongs   (activation_derivative)
 *   -DBUG_ATTENTION_SCALE    dq, dk without the 1/sqrt(hs) of S       (scale_missing)
 *   -DBUG_ENCODER_OVERWRITE  dwte[id] = dout, not +=: a repeated token keeps its last row
 *                                                                    (repeated_token_overwritten)
 *
 * One file, the C standard library only. Rows are examples: x is (N, C), or (B, T, C) with
 * N = B T rows. The arithmetic is in double; arrays arrive in the message's dtype (float32 or
 * float64, little-endian) and the gradients go back in it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINE (1 << 16)
#define MAX_ARRAYS 8
#define MAX_DIMS 8

static char line[LINE];

static void die(const char *why) {
  fprintf(stderr, "layers.c: %s\n", why);
  exit(2);
}

/* ------------------------------------------------------------------ the layers */

/* Layer normalization of each row of inp (N rows of C), as the forward pass saves it:
 *   mean = sum_i x_i / C,  rstd = 1 / sqrt(sum_i (x_i - mean)^2 / C + eps)
 *   out_i = (x_i - mean) rstd w_i + b_i                                                 */
static void layernorm_forward(double *mean, double *rstd, const double *inp, int N, int C,
                              double eps) {
  for (int n = 0; n < N; n++) {
    const double *x = inp + (size_t)n * C;
    double m = 0, v = 0;
    for (int i = 0; i < C; i++) m += x[i];
    m /= C;
    for (int i = 0; i < C; i++) v += (x[i] - m) * (x[i] - m);
    v /= C;
    mean[n] = m;
    rstd[n] = 1.0 / sqrt(v + eps);
  }
}

/* With xhat = (x - mean) rstd and g = dout w (the gradient on xhat):
 *   dx = rstd (g - mean_C(g) - xhat mean_C(g xhat)),  dw += sum_rows dout xhat,  db += sum_rows dout
 * The gradients accumulate (+=) into zeroed buffers, as in a training step.             */
static void layernorm_backward(double *dinp, double *dweight, double *dbias, const double *dout,
                               const double *inp, const double *weight, const double *mean,
                               const double *rstd, int N, int C) {
  for (int n = 0; n < N; n++) {
    const double *dy = dout + (size_t)n * C, *x = inp + (size_t)n * C;
    double *dx = dinp + (size_t)n * C;
    double g_mean = 0, g_xhat_mean = 0;  /* the two sums over the row */
    for (int i = 0; i < C; i++) {
      double xhat = (x[i] - mean[n]) * rstd[n], g = weight[i] * dy[i];
      g_mean += g;
      g_xhat_mean += g * xhat;
    }
    g_mean /= C;
    g_xhat_mean /= C;
    for (int i = 0; i < C; i++) {
      double xhat = (x[i] - mean[n]) * rstd[n], g = weight[i] * dy[i];
      dbias[i] += dy[i];
      dweight[i] += xhat * dy[i];
#ifdef BUG_LAYERNORM_MEAN
      dx[i] += rstd[n] * (g - xhat * g_xhat_mean);
#else
      dx[i] += rstd[n] * (g - g_mean - xhat * g_xhat_mean);
#endif
    }
  }
}

/* out = inp W^T + b with inp (N, C), W (OC, C), b (OC); given dout (N, OC):
 *   dinp = dout W,  dW += dout^T inp,  db += sum_rows dout  (dbias NULL: no bias).       */
static void matmul_backward(double *dinp, double *dweight, double *dbias, const double *dout,
                            const double *inp, const double *weight, int N, int C, int OC) {
  for (int n = 0; n < N; n++) {
    const double *dy = dout + (size_t)n * OC;
    double *dx = dinp + (size_t)n * C;
    for (int o = 0; o < OC; o++) {
      const double *w = weight + (size_t)o * C;
      for (int i = 0; i < C; i++) dx[i] += w[i] * dy[o];
    }
  }
  for (int o = 0; o < OC; o++) {
    double *dw = dweight + (size_t)o * C;
    for (int n = 0; n < N; n++) {
      const double *x = inp + (size_t)n * C;
      double d = dout[(size_t)n * OC + o];
      for (int i = 0; i < C; i++) dw[i] += x[i] * d;
#ifdef BUG_MATMUL_DB
      if (dbias && n == 0) dbias[o] += d;
#else
      if (dbias) dbias[o] += d;
#endif
    }
  }
}

/* gelu's tanh form, GPT-2's: gelu(z) = z (1 + tanh(u)) / 2 with u = c (z + k z^3),
 * c = sqrt(2 / pi), k = 0.044715; so gelu'(z) = (1 + t) / 2 + z (1 - t^2) c (1 + 3 k z^2) / 2,
 * t = tanh(u), and dinp = dout gelu'(z).                                                 */
#define GELU_C 0.7978845608028654 /* sqrt(2 / pi) */
#define GELU_K 0.044715

static void gelu_backward(double *dinp, const double *inp, const double *dout, int N) {
  for (int i = 0; i < N; i++) {
    double z = inp[i], t = tanh(GELU_C * (z + GELU_K * z * z * z));
#ifdef BUG_GELU
    double du = GELU_C * (1 + GELU_K * z * z);
#else
    double du = GELU_C * (1 + 3 * GELU_K * z * z);
#endif
    dinp[i] += dout[i] * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * du);
  }
}

/* Causal multi-head self-attention, llm.c's layout: inp (B, T, 3C) holds q, k, v side by side,
 * head h owns channels h hs .. (h + 1) hs - 1 of each third, hs = C / NH (A1). Per head:
 *   S = q k^T / sqrt(hs) (A2), masked to s <= t (A3), P = softmax(S) by rows (A4),
 *   out = P v (A5), written to the head's channels of out (B, T, C) (A6).
 * att (B, NH, T, T) saves P for the backward; its masked entries s > t stay 0. The softmax
 * subtracts the row's maximum over s <= t, so any scores, however negative, give finite P. */
static void attention_forward(double *out, double *att, const double *inp, int B, int T, int C,
                              int NH) {
  int C3 = 3 * C, hs = C / NH;
  double scale = 1.0 / sqrt(hs);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int h = 0; h < NH; h++) {
        const double *q = inp + (size_t)b * T * C3 + (size_t)t * C3 + h * hs;
        double *p = att + (((size_t)b * NH + h) * T + t) * T;
        double maxval = -INFINITY, sum = 0;
        for (int s = 0; s <= t; s++) {
          const double *k = inp + (size_t)b * T * C3 + (size_t)s * C3 + C + h * hs;
          double dot = 0;
          for (int i = 0; i < hs; i++) dot += q[i] * k[i];
          p[s] = dot * scale;  /* (A2), s <= t only (A3) */
          if (p[s] > maxval) maxval = p[s];
        }
        for (int s = 0; s <= t; s++) sum += (p[s] = exp(p[s] - maxval));  /* (A4) */
        for (int s = 0; s <= t; s++) p[s] /= sum;
        double *o = out + (size_t)b * T * C + (size_t)t * C + h * hs;
        for (int i = 0; i < hs; i++) o[i] = 0;
        for (int s = 0; s <= t; s++) {
          const double *v = inp + (size_t)b * T * C3 + (size_t)s * C3 + 2 * C + h * hs;
          for (int i = 0; i < hs; i++) o[i] += p[s] * v[i];  /* (A5), (A6) */
        }
      }
}

/* Given dout (B, T, C), dO the head's channels of it (A7), per head and query t:
 *   dv_s += P_ts dO_t (A8),  dP_ts = dO_t . v_s (A9),  dS_ts = P_ts (dP_ts - sum_s' P_ts' dP_ts') (A10),
 *   dq_t += sum_s dS_ts k_s / sqrt(hs) (A11),  dk_s += dS_ts q_t / sqrt(hs) (A12),
 * over s <= t only, into dinp (B, T, 3C) laid out as inp (A13). dpreatt is scratch of T. */
static void attention_backward(double *dinp, double *dpreatt, const double *dout, const double *inp,
                               const double *att, int B, int T, int C, int NH) {
  int C3 = 3 * C, hs = C / NH;
#ifdef BUG_ATTENTION_SCALE
  double scale = 1.0;
#else
  double scale = 1.0 / sqrt(hs);
#endif
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int h = 0; h < NH; h++) {
        const double *p = att + (((size_t)b * NH + h) * T + t) * T;
        const double *dO = dout + (size_t)b * T * C + (size_t)t * C + h * hs;
        const double *q = inp + (size_t)b * T * C3 + (size_t)t * C3 + h * hs;
        double *dq = dinp + (size_t)b * T * C3 + (size_t)t * C3 + h * hs;
        double centre = 0;  /* sum_s P_ts dP_ts */
        for (int s = 0; s <= t; s++) {
          const double *v = inp + (size_t)b * T * C3 + (size_t)s * C3 + 2 * C + h * hs;
          double *dv = dinp + (size_t)b * T * C3 + (size_t)s * C3 + 2 * C + h * hs;
          double dp = 0;
          for (int i = 0; i < hs; i++) {
            dp += dO[i] * v[i];     /* (A9) */
            dv[i] += p[s] * dO[i];  /* (A8) */
          }
          dpreatt[s] = dp;
          centre += p[s] * dp;
        }
        for (int s = 0; s <= t; s++) {
          const double *k = inp + (size_t)b * T * C3 + (size_t)s * C3 + C + h * hs;
          double *dk = dinp + (size_t)b * T * C3 + (size_t)s * C3 + C + h * hs;
          double ds = p[s] * (dpreatt[s] - centre);  /* (A10) */
          for (int i = 0; i < hs; i++) {
            dq[i] += ds * k[i] * scale;  /* (A11) */
            dk[i] += ds * q[i] * scale;  /* (A12) */
          }
        }
      }
}

/* Token and position embedding, out[b, t] = wte[ids[b, t]] + wpe[t] (EMB1); given dout (B, T, C):
 *   dwte[v] += dout[b, t] for each (b, t) with ids[b, t] = v (EMB2), a token seen twice gets both,
 *   dwpe[t] += dout[b, t] for each b (EMB3).                                              */
static void encoder_backward(double *dwte, double *dwpe, const double *dout, const long *ids, int B,
                             int T, int C) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      const double *dy = dout + ((size_t)b * T + t) * C;
      double *dw = dwte + (size_t)ids[(size_t)b * T + t] * C, *dp = dwpe + (size_t)t * C;
      for (int i = 0; i < C; i++) {
#ifdef BUG_ENCODER_OVERWRITE
        dw[i] = dy[i];
#else
        dw[i] += dy[i];  /* (EMB2) */
#endif
        dp[i] += dy[i];  /* (EMB3) */
      }
    }
}

/* ------------------------------------------------------------------ the wire */

typedef struct {
  char name[32], dtype[16];
  int rank;
  long shape[MAX_DIMS];
  size_t size;   /* entries */
  double *data;  /* the entries as doubles */
} Array;

/* The text after "key": in a header. bpref writes compact JSON with every key of an op message
 * before its "arrays" list, so the first match is the message's own key. */
static const char *find(const char *h, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(h, pat);
  return p ? p + strlen(pat) : NULL;
}

/* A string value "..." at p copied into out; an empty string for null. */
static void str_at(const char *p, char *out, size_t size) {
  out[0] = 0;
  if (!p || *p != '"') return;
  size_t n = strcspn(p + 1, "\"");
  if (n >= size) die("a name is too long");
  memcpy(out, p + 1, n);
  out[n] = 0;
}

/* The arrays list of a header: name, dtype and shape of each, in order; returns how many. */
static int parse_arrays(const char *h, Array *arrays) {
  const char *p = find(h, "arrays");
  int n = 0;
  if (!p) return 0;
  while ((p = strstr(p, "{\"name\":")) != NULL) {
    if (n == MAX_ARRAYS) die("too many arrays");
    Array *a = &arrays[n++];
    str_at(p + 8, a->name, sizeof a->name);
    str_at(find(p, "dtype"), a->dtype, sizeof a->dtype);
    const char *s = find(p, "shape");
    if (!s) die("an array without a shape");
    s++;
    a->rank = 0;
    a->size = 1;
    while (*s != ']') {
      char *end;
      if (a->rank == MAX_DIMS) die("too many dimensions");
      a->shape[a->rank] = strtol(s, &end, 10);
      a->size *= (size_t)a->shape[a->rank++];
      s = *end == ',' ? end + 1 : end;
    }
    p = s;
  }
  return n;
}

static void read_exact(void *buf, size_t n) {
  if (n && fread(buf, 1, n, stdin) != n) die("stdin ended inside an array");
}

/* The entries of one array from stdin, as doubles (float32, float64 or int64; little-endian
 * machines only). Every array is read, used or not, so that the stream stays in step. */
static void read_array(Array *a) {
  a->data = malloc((a->size ? a->size : 1) * sizeof(double));
  if (!strcmp(a->dtype, "float64")) {
    read_exact(a->data, a->size * sizeof(double));
  } else if (!strcmp(a->dtype, "float32") || !strcmp(a->dtype, "int64")) {
    int f32 = a->dtype[0] == 'f';
    size_t width = f32 ? sizeof(float) : sizeof(long long);
    unsigned char *raw = malloc((a->size ? a->size : 1) * width);
    read_exact(raw, a->size * width);
    for (size_t i = 0; i < a->size; i++) {
      if (f32) { float v; memcpy(&v, raw + i * width, width); a->data[i] = v; }
      else { long long v; memcpy(&v, raw + i * width, width); a->data[i] = (double)v; }
    }
    free(raw);
  } else {
    die("an array of an unknown dtype");
  }
}

static Array *named(Array *arrays, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (!strcmp(arrays[i].name, name)) return &arrays[i];
  return NULL;
}

static void error_reply(long id, const char *message) {
  printf("{\"type\":\"error\",\"id\":%ld,\"message\":\"%s\",\"arrays\":[]}\n", id, message);
  fflush(stdout);
}

/* One output: its name, the shape of the argument it has the shape of, its entries. */
typedef struct {
  const char *name;
  const Array *like;
  const double *data;
} Output;

static void grads_reply(long id, const char *dtype, const Output *outs, int n) {
  printf("{\"type\":\"grads\",\"id\":%ld,\"arrays\":[", id);
  for (int k = 0; k < n; k++) {
    printf("%s{\"name\":\"%s\",\"dtype\":\"%s\",\"shape\":[", k ? "," : "", outs[k].name, dtype);
    for (int d = 0; d < outs[k].like->rank; d++) printf("%s%ld", d ? "," : "", outs[k].like->shape[d]);
    printf("]}");
  }
  printf("]}\n");
  int f32 = !strcmp(dtype, "float32");
  for (int k = 0; k < n; k++)
    for (size_t i = 0; i < outs[k].like->size; i++) {
      if (f32) { float v = (float)outs[k].data[i]; fwrite(&v, sizeof v, 1, stdout); }
      else fwrite(&outs[k].data[i], sizeof(double), 1, stdout);
    }
  fflush(stdout);
}

static double *zeros(size_t n) { return calloc(n ? n : 1, sizeof(double)); }

/* One op message: read its arrays, run the layer, reply. */
static void run_op(const char *h) {
  const char *p = find(h, "id");
  if (!p) die("an op message without an id");
  long id = strtol(p, NULL, 10);
  char kind[32], name[32], dtype[16], layout[16];
  str_at(find(h, "kind"), kind, sizeof kind);
  str_at(find(h, "name"), name, sizeof name);
  str_at(find(h, "dtype"), dtype, sizeof dtype);
  str_at(find(h, "layout"), layout, sizeof layout);
  Array a[MAX_ARRAYS];
  int n = parse_arrays(h, a);
  for (int i = 0; i < n; i++) read_array(&a[i]);
  if (strcmp(dtype, "float32") && strcmp(dtype, "float64")) {
    error_reply(id, "unsupported dtype");
  } else if (!strcmp(kind, "layernorm")) {
    Array *x = named(a, n, "x"), *w = named(a, n, "w"), *dout = named(a, n, "dout");
    const char *e = find(h, "eps");
    if (!x || !w || !dout || !named(a, n, "b") || !e) die("layernorm needs x, w, b, dout and eps");
    int C = (int)w->size, N = C ? (int)(x->size / (size_t)C) : 0;
    double *mean = zeros((size_t)N), *rstd = zeros((size_t)N);
    double *dx = zeros(x->size), *dw = zeros(w->size), *db = zeros(w->size);
    layernorm_forward(mean, rstd, x->data, N, C, strtod(e, NULL));
    layernorm_backward(dx, dw, db, dout->data, x->data, w->data, mean, rstd, N, C);
    Output outs[] = {{"dx", x, dx}, {"dw", w, dw}, {"db", w, db}};
    grads_reply(id, dtype, outs, 3);
    free(mean); free(rstd); free(dx); free(dw); free(db);
  } else if (!strcmp(kind, "dense")) {
    Array *x = named(a, n, "x"), *W = named(a, n, "W"), *dout = named(a, n, "dout");
    if (!x || !W || !dout || x->rank != 2 || W->rank != 2) die("dense needs x, W (2-d) and dout");
    int in_out = !strcmp(layout, "in_out"), bias = named(a, n, "b") != NULL;
    int N = (int)x->shape[0], C = (int)x->shape[1], OC = (int)(in_out ? W->shape[1] : W->shape[0]);
    double *weight = W->data, *dx = zeros(x->size), *dW = zeros(W->size);
    double *db = bias ? zeros((size_t)OC) : NULL;
    if (in_out) {  /* W came as (C, OC): llm.c's matmul reads (OC, C) */
      weight = zeros(W->size);
      for (int i = 0; i < C; i++)
        for (int o = 0; o < OC; o++) weight[(size_t)o * C + i] = W->data[(size_t)i * OC + o];
    }
    double *dweight = in_out ? zeros(W->size) : dW;
    matmul_backward(dx, dweight, db, dout->data, x->data, weight, N, C, OC);
    if (in_out) {  /* dW goes back in the layout W came in */
      for (int i = 0; i < C; i++)
        for (int o = 0; o < OC; o++) dW[(size_t)i * OC + o] = dweight[(size_t)o * C + i];
      free(weight);
      free(dweight);
    }
    Array bshape = {.rank = 1, .shape = {OC}, .size = (size_t)OC};
    Output outs[] = {{"dx", x, dx}, {"dW", W, dW}, {"db", &bshape, db}};
    grads_reply(id, dtype, outs, bias ? 3 : 2);
    free(dx); free(dW); free(db);
  } else if (!strcmp(kind, "activation") && !strcmp(name, "gelu_tanh")) {
    Array *z = named(a, n, "z"), *dout = named(a, n, "dout");
    if (!z || !dout) die("activation gelu_tanh needs z and dout (takes z)");
    double *dz = zeros(z->size);
    gelu_backward(dz, z->data, dout->data, (int)z->size);
    Output outs[] = {{"dz", z, dz}};
    grads_reply(id, dtype, outs, 1);
    free(dz);
  } else if (!strcmp(kind, "attention")) {
    Array *qkv = named(a, n, "qkv"), *dout = named(a, n, "dout");
    const char *hp = find(h, "heads");
    int NH = hp ? (int)strtol(hp, NULL, 10) : 0;
    if (strcmp(layout, "llmc")) {
      error_reply(id, "attention: layout llmc only (qkv (B, T, 3C)); check with --layout llmc");
    } else if (!qkv || !dout || qkv->rank != 3 || dout->rank != 3 || NH < 1) {
      die("attention needs qkv (B, T, 3C), dout (B, T, C) and heads in options");
    } else {
      int B = (int)qkv->shape[0], T = (int)qkv->shape[1], C = (int)(qkv->shape[2] / 3);
      if (C % NH || dout->shape[0] != B || dout->shape[1] != T || dout->shape[2] != C)
        die("attention: C not divisible by heads, or dout not (B, T, C)");
      double *att = zeros((size_t)B * NH * T * T), *out = zeros(dout->size);
      double *dqkv = zeros(qkv->size), *scratch = zeros((size_t)T);
      attention_forward(out, att, qkv->data, B, T, C, NH);
      attention_backward(dqkv, scratch, dout->data, qkv->data, att, B, T, C, NH);
      Output outs[] = {{"dqkv", qkv, dqkv}};
      grads_reply(id, dtype, outs, 1);
      free(att); free(out); free(dqkv); free(scratch);
    }
  } else if (!strcmp(kind, "embedding")) {
    Array *ids = named(a, n, "ids"), *wte = named(a, n, "wte"), *wpe = named(a, n, "wpe"),
          *dout = named(a, n, "dout");
    if (!ids || !wte || !wpe || !dout || ids->rank != 2 || wte->rank != 2 || wpe->rank != 2)
      die("embedding needs ids (B, T), wte (V, C), wpe (P, C) and dout (B, T, C)");
    int B = (int)ids->shape[0], T = (int)ids->shape[1], V = (int)wte->shape[0], C = (int)wte->shape[1];
    long *tok = malloc((ids->size ? ids->size : 1) * sizeof(long));
    if (wpe->shape[1] != C || dout->size != (size_t)B * T * C)
      die("embedding: wpe not (P, C), or dout not (B, T, C), with wte (V, C)");
    int bad = T > wpe->shape[0];
    for (size_t i = 0; i < ids->size; i++) {
      tok[i] = (long)ids->data[i];
      if (tok[i] < 0 || tok[i] >= V) bad = 1;
    }
    if (bad) {
      error_reply(id, "embedding: an id outside [0, V), or T longer than wpe");
    } else {
      double *dwte = zeros(wte->size), *dwpe = zeros(wpe->size);
      encoder_backward(dwte, dwpe, dout->data, tok, B, T, C);
      Output outs[] = {{"dwte", wte, dwte}, {"dwpe", wpe, dwpe}};
      grads_reply(id, dtype, outs, 2);
      free(dwte); free(dwpe);
    }
    free(tok);
  } else {
    error_reply(id, "unsupported op");
  }
  for (int i = 0; i < n; i++) free(a[i].data);
}

int main(void) {
  if (!fgets(line, LINE, stdin) || !strstr(line, "\"type\":\"hello\"")) die("expected bpref's hello");
  const char *v = find(line, "version");
  if (!v || strtol(v, NULL, 10) < 2) die("bpref speaks version 1 only; op messages need version 2");
  printf("{\"type\":\"hello\",\"version\":2,\"name\":\"examples/c/layers.c\","
         "\"ops\":[\"layernorm\",\"dense\",\"activation:gelu_tanh\",\"attention\",\"embedding\"],"
         "\"dtypes\":[\"float64\",\"float32\"]}\n");
  fflush(stdout);
  while (fgets(line, LINE, stdin)) {
    if (!strchr(line, '\n')) die("a header line is longer than the buffer");
    if (strstr(line, "\"type\":\"bye\"")) return 0;
    if (strstr(line, "\"type\":\"op\"")) run_op(line);
    else die("unknown message");
  }
  return 0;
}
