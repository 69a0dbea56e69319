/* A multilayer perceptron's backprop that speaks bpref-wire version 1 (docs/protocol.md).
 *
 *   cc -O2 -o mlp examples/c/mlp.c -lm && bpref check --exec ./mlp
 *   cc -O2 -DPLANTED_BUG -o mlp_bug examples/c/mlp.c -lm    (drops f' of the hidden layers)
 *
 * One file, the C standard library only. For each case (W_l of shape (n_l, n_{l-1}), or its
 * transpose with layout in_out; rows of x and t are examples):
 *
 *   forward   z_l = a_{l-1} W_l^T + b_l,  a_l = f_l(z_l),  a_0 = x
 *   backward  delta_L = dC/dy * f'_L(z_L),  delta_{l-1} = (delta_l W_l) * f'_{l-1}(z_{l-1})
 *   grads     dC/dW_l = delta_l^T a_{l-1},  dC/db_l = sum over the batch of delta_l
 *
 * with C = sum_k (y_k - t_k)^2 (squared_error) or half of it (half_squared_error), summed or
 * averaged over the batch. The arithmetic is in double; results are sent in the case's dtype.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LAYERS 64
#define LINE (1 << 16)

static char line[LINE];

static void die(const char *why) {
  fprintf(stderr, "mlp.c: %s\n", why);
  exit(2);
}

/* The text after "key": in a header; bpref writes compact JSON and the "arrays" list last. */
static const char *find(const char *h, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(h, pat);
  if (!p) die("a key is missing from the header");
  return p + strlen(pat);
}

static long find_int(const char *h, const char *key) { return strtol(find(h, key), NULL, 10); }

/* The string value of a key (up to the next quote), copied into out. */
static void find_str(const char *h, const char *key, char *out, size_t size) {
  const char *p = find(h, key);
  if (*p != '"') die("a string was expected");
  size_t n = strcspn(p + 1, "\"");
  if (n >= size) die("a name is too long");
  memcpy(out, p + 1, n);
  out[n] = 0;
}

/* A list of integers [1,2,3]; returns how many. */
static int find_ints(const char *h, const char *key, long *out, int most) {
  const char *p = find(h, key) + 1;
  int n = 0;
  while (*p != ']' && n < most) {
    char *end;
    out[n++] = strtol(p, &end, 10);
    p = *end == ',' ? end + 1 : end;
  }
  return n;
}

/* A list of names ["a","b"] into names[i] (16 characters each); returns how many. */
static int find_names(const char *h, const char *key, char names[][16], int most) {
  const char *p = find(h, key) + 1;
  int n = 0;
  while (*p == '"' && n < most) {
    size_t len = strcspn(p + 1, "\"");
    if (len >= 16) die("a name is too long");
    memcpy(names[n], p + 1, len);
    names[n++][len] = 0;
    p += len + 2;
    if (*p == ',') p++;
  }
  return n;
}

static void read_exact(void *buf, size_t n) {
  if (fread(buf, 1, n, stdin) != n) die("stdin ended inside an array");
}

/* n entries of the case's dtype from stdin, as doubles (little-endian machines only). */
static double *read_array(size_t n, int f32) {
  double *out = malloc((n ? n : 1) * sizeof *out);
  if (f32) {
    float *tmp = malloc((n ? n : 1) * sizeof *tmp);
    read_exact(tmp, n * sizeof *tmp);
    for (size_t i = 0; i < n; i++) out[i] = tmp[i];
    free(tmp);
  } else {
    read_exact(out, n * sizeof *out);
  }
  return out;
}

static void write_array(const double *a, size_t n, int f32) {
  for (size_t i = 0; i < n; i++) {
    if (f32) { float v = (float)a[i]; fwrite(&v, sizeof v, 1, stdout); }
    else fwrite(&a[i], sizeof a[i], 1, stdout);
  }
}

enum { IDENTITY, RELU, TANH, SIGMOID };

static int activation(const char *name) {
  if (!strcmp(name, "identity")) return IDENTITY;
  if (!strcmp(name, "relu")) return RELU;
  if (!strcmp(name, "tanh")) return TANH;
  if (!strcmp(name, "sigmoid")) return SIGMOID;
  return -1;
}

static double f(int act, double z) {
  switch (act) {
    case RELU: return z > 0 ? z : 0;
    case TANH: return tanh(z);
    case SIGMOID: return 1 / (1 + exp(-z));
    default: return z;
  }
}

/* f'(z) from z and a = f(z): relu'(0) = 0, tanh' = 1 - a^2, sigmoid' = a (1 - a). */
static double df(int act, double z, double a) {
  switch (act) {
    case RELU: return z > 0 ? 1 : 0;
    case TANH: return 1 - a * a;
    case SIGMOID: return a * (1 - a);
    default: return 1;
  }
}

static void error_reply(long id, const char *message) {
  printf("{\"type\":\"error\",\"id\":%ld,\"message\":\"%s\",\"arrays\":[]}\n", id, message);
  fflush(stdout);
}

static void run_case(const char *h) {
  long id = find_int(h, "id"), n[MAX_LAYERS + 1];
  char dtype[16], layout[16], reduction[16], loss[32], acts[MAX_LAYERS][16];
  find_str(h, "dtype", dtype, sizeof dtype);
  find_str(h, "layout", layout, sizeof layout);
  find_str(h, "reduction", reduction, sizeof reduction);
  find_str(h, "loss", loss, sizeof loss);
  int L = find_names(h, "activations", acts, MAX_LAYERS);
  int sizes = find_ints(h, "sizes", n, MAX_LAYERS + 1);
  long B = find_int(h, "batch");
  int bias = strncmp(find(h, "bias"), "true", 4) == 0, f32 = !strcmp(dtype, "float32");
  int in_out = !strcmp(layout, "in_out"), act[MAX_LAYERS];
  if (sizes != L + 1) die("sizes and activations disagree");
  double *W[MAX_LAYERS], *b[MAX_LAYERS];
  for (int l = 1; l <= L; l++) {
    W[l - 1] = read_array((size_t)(n[l] * n[l - 1]), f32);
    b[l - 1] = bias ? read_array((size_t)n[l], f32) : calloc((size_t)n[l], sizeof(double));
  }
  double *x = read_array((size_t)(B * n[0]), f32), *t = read_array((size_t)(B * n[L]), f32);
  for (int l = 0; l < L; l++) {
    act[l] = activation(acts[l]);
    if (act[l] < 0) { error_reply(id, "unsupported activation"); return; }
  }
  int half = !strcmp(loss, "half_squared_error");
  if (!half && strcmp(loss, "squared_error")) { error_reply(id, "unsupported loss"); return; }
  double scale = !strcmp(reduction, "mean") ? 1.0 / (double)B : 1.0;
  /* W_l[j][i] = W_l(j, i) of the (n_l, n_{l-1}) matrix, whichever layout it came in */
#define WL(l, j, i) W[(l) - 1][in_out ? (i) * n[l] + (j) : (j) * n[(l) - 1] + (i)]
  double *z[MAX_LAYERS + 1], *a[MAX_LAYERS + 1], *d[MAX_LAYERS + 1];
  a[0] = x;
  for (int l = 1; l <= L; l++) {  /* forward */
    z[l] = malloc((size_t)(B * n[l]) * sizeof(double));
    a[l] = malloc((size_t)(B * n[l]) * sizeof(double));
    d[l] = malloc((size_t)(B * n[l]) * sizeof(double));
    for (long s = 0; s < B; s++)
      for (long j = 0; j < n[l]; j++) {
        double acc = b[l - 1][j];
        for (long i = 0; i < n[l - 1]; i++) acc += WL(l, j, i) * a[l - 1][s * n[l - 1] + i];
        z[l][s * n[l] + j] = acc;
        a[l][s * n[l] + j] = f(act[l - 1], acc);
      }
  }
  double C = 0;
  for (long s = 0; s < B; s++)  /* delta_L = dC/dy * f'_L(z_L) */
    for (long k = 0; k < n[L]; k++) {
      long q = s * n[L] + k;
      double r = a[L][q] - t[q];
      C += (half ? 0.5 : 1.0) * r * r * scale;
      d[L][q] = (half ? r : 2 * r) * scale * df(act[L - 1], z[L][q], a[L][q]);
    }
  for (int l = L; l > 1; l--)  /* delta_{l-1} = (delta_l W_l) * f'_{l-1}(z_{l-1}) */
    for (long s = 0; s < B; s++)
      for (long i = 0; i < n[l - 1]; i++) {
        double acc = 0;
        for (long j = 0; j < n[l]; j++) acc += d[l][s * n[l] + j] * WL(l, j, i);
        long q = s * n[l - 1] + i;
#ifdef PLANTED_BUG
        d[l - 1][q] = acc;
#else
        d[l - 1][q] = acc * df(act[l - 2], z[l - 1][q], a[l - 1][q]);
#endif
      }
  char head[LINE];
  int at = snprintf(head, sizeof head, "{\"type\":\"grads\",\"id\":%ld,\"arrays\":[", id);
  for (int l = 1; l <= L; l++) {
    long r = in_out ? n[l - 1] : n[l], c = in_out ? n[l] : n[l - 1];
    at += snprintf(head + at, sizeof head - at, "{\"name\":\"dW%d\",\"dtype\":\"%s\",\"shape\":[%ld,%ld]},",
                   l, dtype, r, c);
    if (bias)
      at += snprintf(head + at, sizeof head - at, "{\"name\":\"db%d\",\"dtype\":\"%s\",\"shape\":[%ld]},",
                     l, dtype, n[l]);
  }
  snprintf(head + at, sizeof head - at, "{\"name\":\"loss\",\"dtype\":\"%s\",\"shape\":[]}]}\n", dtype);
  fputs(head, stdout);
  for (int l = 1; l <= L; l++) {  /* dC/dW_l = delta_l^T a_{l-1}, dC/db_l = sum_s delta_l */
    double *dW = calloc((size_t)(n[l] * n[l - 1]), sizeof(double));
    double *db = calloc((size_t)n[l], sizeof(double));
    for (long s = 0; s < B; s++)
      for (long j = 0; j < n[l]; j++) {
        double dj = d[l][s * n[l] + j];
        db[j] += dj;
        for (long i = 0; i < n[l - 1]; i++)
          dW[in_out ? i * n[l] + j : j * n[l - 1] + i] += dj * a[l - 1][s * n[l - 1] + i];
      }
    write_array(dW, (size_t)(n[l] * n[l - 1]), f32);
    if (bias) write_array(db, (size_t)n[l], f32);
    free(dW);
    free(db);
  }
  write_array(&C, 1, f32);
  fflush(stdout);
  for (int l = 1; l <= L; l++) { free(z[l]); free(a[l]); free(d[l]); free(W[l - 1]); free(b[l - 1]); }
  free(x);
  free(t);
}

int main(void) {
  if (!fgets(line, LINE, stdin) || !strstr(line, "\"type\":\"hello\"")) die("expected bpref's hello");
  printf("{\"type\":\"hello\",\"version\":1,\"name\":\"examples/c/mlp.c\","
         "\"activations\":[\"identity\",\"relu\",\"tanh\",\"sigmoid\"],"
         "\"losses\":[\"squared_error\",\"half_squared_error\"],\"dtypes\":[\"float64\",\"float32\"],"
         "\"layouts\":[\"out_in\",\"in_out\"],\"reductions\":[\"mean\",\"sum\"],\"no_bias\":true}\n");
  fflush(stdout);
  while (fgets(line, LINE, stdin)) {
    if (!strchr(line, '\n')) die("a header line is longer than the buffer");
    if (strstr(line, "\"type\":\"bye\"")) return 0;
    if (strstr(line, "\"type\":\"case\"")) run_case(line);
    else die("unknown message");
  }
  return 0;
}
