// Forward and BPTT loops of the LSTM family, GRU and pseudo LSTM as compiled CPU code (the `cpp` kernels of
// sweep/cells_lstm.py, sweep/cells_gru.py, sweep/cells_pseudo.py; their equations: lstm_step and the
// reference steps there).
//
// Why: at small shapes (batch 1, hidden 20-100) a loop of tensor ops spends most of its time dispatching
// ~10 tiny ops per step. Here each step is one GEMM (two for FGR) called straight into BLAS, plus a few
// loops over raw pointers for all of the gate arithmetic; nothing is dispatched inside the time loop.
//
// Conventions: time-major buffers (T, B, .), gate blocks stacked per row at
// the offsets of the layout (-1: absent), acts holds the post-activation gates, peephole rows stacked in
// the order i, f, o over the gates that exist. forget: 0 own gate, 1 coupled (f = 1 - i), 2 none (f = 1).
// Matrices are row-major; gemm() takes BLAS's column-major view of them, so a row-major (R, C) matrix is
// a column-major (C, R) one with leading dimension C.

#include <torch/extension.h>

// The float loops clamp before they exponentiate; with trapping math GCC will not vectorise such a select
// on AVX2 or SSE2 (a compare may raise an FP exception). Nothing here reads the FP exception flags.
#pragma GCC optimize("no-trapping-math")

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

// The Fortran BLAS that libtorch_cpu exports (MKL or OpenBLAS). Weak: a torch build without them still
// loads this module and gemm() falls back to at::addmm_ (a little slower: one dispatch per product).
// Integers are passed as pointers to int64: on a little-endian machine an LP64 BLAS reads the low 32 bits,
// which hold the same value, and an ILP64 BLAS reads all 64, so either interface gets the right sizes.
extern "C" {
void sgemm_(const char*, const char*, const int64_t*, const int64_t*, const int64_t*, const float*,
            const float*, const int64_t*, const float*, const int64_t*, const float*, float*, const int64_t*)
    __attribute__((weak));
void dgemm_(const char*, const char*, const int64_t*, const int64_t*, const int64_t*, const double*,
            const double*, const int64_t*, const double*, const int64_t*, const double*, double*,
            const int64_t*) __attribute__((weak));
}

namespace {

// One build runs on any x86-64; the elementwise loops get AVX-512 / AVX2 clones picked at load time
// (-march=native is not an option: the build cache may be shared between machines).
// (GCC 11+ knows the x86-64-v* levels; the clones dispatch through glibc's ifunc)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    defined(__GLIBC__)
#define ODY_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ODY_CLONES
#endif
#define ODY_INLINE inline __attribute__((always_inline))

// ----------------------------------------------------------------------------------------- activations

// float: a Cephes-style exp (about 2 ulp) written so that the compiler vectorises the loops around it;
// libm's expf/tanhf are scalar calls. double keeps libm, so gradcheck sees exact derivatives.
// No std::min/max, floor or float-to-int conversion: GCC does not vectorise a loop that holds them (it
// cannot if-convert the clamp, with trapping math, ahead of a conversion), so every exp here ran scalar.
// The rounding adds 1.5 * 2^23, which leaves round(x / ln 2) in the low bits of the float.
ODY_INLINE float exp_approx(float x) {
  x = x < 88.3f ? x : 88.3f;
  x = x > -87.3f ? x : -87.3f;
  const float shift = 12582912.0f;
  const float m = x * 1.44269504088896341f + shift;
  const float fx = m - shift;
  int32_t k;
  std::memcpy(&k, &m, sizeof(k));
  k -= 0x4B400000;  // the bits of `shift`
  float r = x - fx * 0.693359375f;
  r = r + fx * 2.12194440e-4f;
  float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  int32_t bits = (k + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

ODY_INLINE float sigm(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|); the sign is moved with bit operations, since
// with std::fabs and std::copysign GCC 12 left the tanh loops scalar
ODY_INLINE float tanh_(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  float ax;
  std::memcpy(&ax, &bits, sizeof(ax));
  const float e = exp_approx(-2.0f * ax);
  float t = (1.0f - e) / (1.0f + e);
  std::memcpy(&bits, &t, sizeof(bits));
  bits |= sign;
  std::memcpy(&t, &bits, sizeof(t));
  return t;
}
ODY_INLINE double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
ODY_INLINE double tanh_(double x) { return std::tanh(x); }

// ---------------------------------------------------------------------------------------------- gemm

ODY_INLINE void blas(const char* ta, const char* tb, const int64_t* m, const int64_t* n, const int64_t* k,
                     const float* alpha, const float* a, const int64_t* lda, const float* b,
                     const int64_t* ldb, const float* beta, float* c, const int64_t* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
ODY_INLINE void blas(const char* ta, const char* tb, const int64_t* m, const int64_t* n, const int64_t* k,
                     const double* alpha, const double* a, const int64_t* lda, const double* b,
                     const int64_t* ldb, const double* beta, double* c, const int64_t* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
template <typename T>
bool have_blas();
template <>
bool have_blas<float>() { return sgemm_ != nullptr; }
template <>
bool have_blas<double>() { return dgemm_ != nullptr; }
#else
template <typename T>
bool have_blas() { return false; }
#endif

bool use_blas = true;  // tests switch it off to exercise the at::addmm_ fallback

// column-major op(A) view of a stored column-major matrix, as a (rows, cols) tensor
template <typename T>
at::Tensor view(const T* p, char trans, int64_t rows, int64_t cols, int64_t ld) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  if (trans == 'N') return at::from_blob(const_cast<T*>(p), {rows, cols}, {1, ld}, opts);
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
}

// C = alpha op(A) op(B) + beta C, BLAS (column-major) conventions; beta = 0 ignores C's contents
template <typename T>
void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const int64_t big = std::numeric_limits<int>::max();
  const bool fits = m < big && n < big && k < big && lda < big && ldb < big && ldc < big;
  if (k > 0 && use_blas && have_blas<T>() && fits) {
    const T one = 1;
    blas(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
    return;
  }
  at::Tensor out = view(c, 'N', m, n, ldc);
  if (k == 0) {
    out.mul_(beta);
    return;
  }
  out.addmm_(view(a, ta, m, k, lda), view(b, tb, k, n, ldb), beta, 1);
}

// ------------------------------------------------------------------------------------------- layout

struct Layout {
  int64_t n, off_i, off_f, off_z, off_o, forget;
  bool input_act, output_act, peepholes, fgr;
};

// ------------------------------------------------------------------------------------- forward rows

// One step of the gate arithmetic for `rows` batch rows; a holds the pre-activations on entry.
template <typename T>
ODY_INLINE void forward_rows_impl(const Layout& L, int64_t rows, int64_t gn, T* acts, const T* c_prev,
                                  T* c_out, T* hc_out, T* y_out, const T* p_i, const T* p_f,
                                  const T* p_o) {
  const int64_t n = L.n;
  for (int64_t b = 0; b < rows; ++b) {
    T* a = acts + b * gn;
    const T* cp = c_prev + b * n;
    T* c = c_out + b * n;
    T* hc = hc_out + b * n;
    T* y = y_out + b * n;
    T* ai = a + L.off_i;
    T* af = a + L.off_f;
    T* az = a + L.off_z;
    T* ao = a + L.off_o;
    if (L.off_i >= 0)
      for (int64_t j = 0; j < n; ++j) ai[j] = sigm(ai[j] + p_i[j] * cp[j]);
    if (L.forget == 0)
      for (int64_t j = 0; j < n; ++j) af[j] = sigm(af[j] + p_f[j] * cp[j]);
    if (L.input_act)
      for (int64_t j = 0; j < n; ++j) az[j] = tanh_(az[j]);
    if (L.forget == 0 && L.off_i >= 0) {
      for (int64_t j = 0; j < n; ++j) c[j] = az[j] * ai[j] + af[j] * cp[j];
    } else if (L.forget == 0) {  // NIG: i = 1
      for (int64_t j = 0; j < n; ++j) c[j] = az[j] + af[j] * cp[j];
    } else if (L.forget == 1) {  // CIFG: f = 1 - i
      for (int64_t j = 0; j < n; ++j) c[j] = az[j] * ai[j] + cp[j] * (T(1) - ai[j]);
    } else if (L.off_i >= 0) {  // NFG: f = 1
      for (int64_t j = 0; j < n; ++j) c[j] = az[j] * ai[j] + cp[j];
    } else {
      for (int64_t j = 0; j < n; ++j) c[j] = az[j] + cp[j];
    }
    const T* h = c;
    if (L.output_act) {
      for (int64_t j = 0; j < n; ++j) hc[j] = tanh_(c[j]);
      h = hc;
    }
    if (L.off_o >= 0) {
      for (int64_t j = 0; j < n; ++j) {
        ao[j] = sigm(ao[j] + p_o[j] * c[j]);
        y[j] = h[j] * ao[j];
      }
    } else {
      std::memcpy(y, h, sizeof(T) * n);
    }
  }
}

ODY_CLONES void forward_rows(const Layout& L, int64_t rows, int64_t gn, float* acts, const float* c_prev,
                             float* c_out, float* hc_out, float* y_out, const float* p_i, const float* p_f,
                             const float* p_o) {
  forward_rows_impl<float>(L, rows, gn, acts, c_prev, c_out, hc_out, y_out, p_i, p_f, p_o);
}
ODY_CLONES void forward_rows(const Layout& L, int64_t rows, int64_t gn, double* acts, const double* c_prev,
                             double* c_out, double* hc_out, double* y_out, const double* p_i,
                             const double* p_f, const double* p_o) {
  forward_rows_impl<double>(L, rows, gn, acts, c_prev, c_out, hc_out, y_out, p_i, p_f, p_o);
}

// ------------------------------------------------------------------------------------ backward rows

struct BackRows {
  int64_t rows, gn;
  const void* acts;    // (B, GN) post-activation gates of this step
  const void* c_prev;  // (B, N)
  const void* c;       // (B, N)
  const void* hc;      // (B, N): tanh(c) or c
  const void* grad_y;  // (B, N) or null
  const void* grad_c;  // (B, N) or null
  const void* dh;      // (B, N): gradient reaching y_t through the next step
  const void* dg;      // (B, 3N) FGR: gradient reaching the gates (i, f, o) through the next step, or null
  void* dc_next;       // (B, N) in: gradient reaching c_t through the next step; out: to c_(t-1)
  void* d_act;         // (B, GN) out: gradient of the pre-activations
  void* dp;            // (P, N) peephole gradient accumulators, or null
};

template <typename T>
ODY_INLINE void backward_rows_impl(const Layout& L, const BackRows& R, const T* p_i, const T* p_f,
                                   const T* p_o, const T* zeros, T* dy, T* dc) {
  const int64_t n = L.n, gn = R.gn;
  const bool has_i = L.off_i >= 0, has_f = L.forget == 0, has_o = L.off_o >= 0;
  int64_t k = 0;
  T* dp = static_cast<T*>(R.dp);
  T* dp_i = dp && has_i ? dp + (k++) * n : nullptr;
  T* dp_f = dp && has_f ? dp + (k++) * n : nullptr;
  T* dp_o = dp && has_o ? dp + k * n : nullptr;
  for (int64_t b = 0; b < R.rows; ++b) {
    const T* a = static_cast<const T*>(R.acts) + b * gn;
    const T* cp = static_cast<const T*>(R.c_prev) + b * n;
    const T* c = static_cast<const T*>(R.c) + b * n;
    const T* hc = static_cast<const T*>(R.hc) + b * n;
    const T* dh = static_cast<const T*>(R.dh) + b * n;
    T* dcn = static_cast<T*>(R.dc_next) + b * n;
    T* da = static_cast<T*>(R.d_act) + b * gn;
    const T* ai = a + L.off_i;
    const T* af = a + L.off_f;
    const T* az = a + L.off_z;
    const T* ao = a + L.off_o;
    T* dai = da + L.off_i;
    T* daf = da + L.off_f;
    T* daz = da + L.off_z;
    T* dao = da + L.off_o;
    const T* dg = R.dg ? static_cast<const T*>(R.dg) + b * 3 * n : nullptr;
    const T* dg_i = dg ? dg : zeros;
    const T* dg_f = dg ? dg + n : zeros;
    const T* dg_o = dg ? dg + 2 * n : zeros;

    if (R.grad_y) {
      const T* gy = static_cast<const T*>(R.grad_y) + b * n;
      for (int64_t j = 0; j < n; ++j) dy[j] = gy[j] + dh[j];
    } else {
      std::memcpy(dy, dh, sizeof(T) * n);
    }
    if (R.grad_c) {
      const T* gc = static_cast<const T*>(R.grad_c) + b * n;
      for (int64_t j = 0; j < n; ++j) dc[j] = dcn[j] + gc[j];
    } else {
      std::memcpy(dc, dcn, sizeof(T) * n);
    }
    // through y = h(c) * o, and o's peephole on the new cell
    if (has_o && L.output_act) {
      for (int64_t j = 0; j < n; ++j) {
        T o = ao[j];
        T d = (dy[j] * hc[j] + dg_o[j]) * o * (T(1) - o);
        dao[j] = d;
        dc[j] += dy[j] * o * (T(1) - hc[j] * hc[j]) + p_o[j] * d;
      }
    } else if (has_o) {
      for (int64_t j = 0; j < n; ++j) {
        T o = ao[j];
        T d = (dy[j] * c[j] + dg_o[j]) * o * (T(1) - o);
        dao[j] = d;
        dc[j] += dy[j] * o + p_o[j] * d;
      }
    } else if (L.output_act) {
      for (int64_t j = 0; j < n; ++j) dc[j] += dy[j] * (T(1) - hc[j] * hc[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) dc[j] += dy[j];
    }
    // through c = z * i + f * c_prev
    if (has_i) {
      if (L.forget == 1) {
        for (int64_t j = 0; j < n; ++j) dai[j] = (dc[j] * (az[j] - cp[j]) + dg_i[j]) * ai[j] * (T(1) - ai[j]);
      } else {
        for (int64_t j = 0; j < n; ++j) dai[j] = (dc[j] * az[j] + dg_i[j]) * ai[j] * (T(1) - ai[j]);
      }
    }
    if (has_f)
      for (int64_t j = 0; j < n; ++j) daf[j] = (dc[j] * cp[j] + dg_f[j]) * af[j] * (T(1) - af[j]);
    if (has_i && L.input_act) {
      for (int64_t j = 0; j < n; ++j) daz[j] = dc[j] * ai[j] * (T(1) - az[j] * az[j]);
    } else if (has_i) {
      for (int64_t j = 0; j < n; ++j) daz[j] = dc[j] * ai[j];
    } else if (L.input_act) {
      for (int64_t j = 0; j < n; ++j) daz[j] = dc[j] * (T(1) - az[j] * az[j]);
    } else {
      std::memcpy(daz, dc, sizeof(T) * n);
    }
    // to c_prev: directly through f, and through the i and f peepholes
    if (has_f) {
      for (int64_t j = 0; j < n; ++j) dcn[j] = dc[j] * af[j] + p_f[j] * daf[j];
    } else if (L.forget == 1) {
      for (int64_t j = 0; j < n; ++j) dcn[j] = dc[j] * (T(1) - ai[j]);
    } else {
      std::memcpy(dcn, dc, sizeof(T) * n);
    }
    if (has_i)
      for (int64_t j = 0; j < n; ++j) dcn[j] += p_i[j] * dai[j];
    if (dp_i)
      for (int64_t j = 0; j < n; ++j) dp_i[j] += dai[j] * cp[j];
    if (dp_f)
      for (int64_t j = 0; j < n; ++j) dp_f[j] += daf[j] * cp[j];
    if (dp_o)
      for (int64_t j = 0; j < n; ++j) dp_o[j] += dao[j] * c[j];
  }
}

ODY_CLONES void backward_rows(const Layout& L, const BackRows& R, const float* p_i, const float* p_f,
                              const float* p_o, const float* zeros, float* dy, float* dc) {
  backward_rows_impl<float>(L, R, p_i, p_f, p_o, zeros, dy, dc);
}
ODY_CLONES void backward_rows(const Layout& L, const BackRows& R, const double* p_i, const double* p_f,
                              const double* p_o, const double* zeros, double* dy, double* dc) {
  backward_rows_impl<double>(L, R, p_i, p_f, p_o, zeros, dy, dc);
}

// ---------------------------------------------------------------------------------------- drivers

Layout make_layout(int64_t n, int64_t off_i, int64_t off_f, int64_t off_z, int64_t off_o, int64_t forget,
                   bool input_act, bool output_act, bool peepholes, bool fgr) {
  TORCH_CHECK(n > 0 && off_z >= 0 && forget >= 0 && forget <= 2, "invalid LSTM layout");
  TORCH_CHECK(forget != 1 || off_i >= 0, "a coupled forget gate needs the input gate");
  TORCH_CHECK(!fgr || (off_i == 0 && off_f == n && off_o == 2 * n && forget == 0),
              "gate recurrence expects the block order i, f, o, z");
  return Layout{n, off_i, off_f, off_z, off_o, forget, input_act, output_act, peepholes, fgr};
}

// peephole rows (or a zero row for an absent peephole), in the order i, f, o over the gates that exist
template <typename T>
void peephole_rows(const Layout& L, const at::Tensor& peep, const T* zeros, const T** p_i, const T** p_f,
                   const T** p_o) {
  *p_i = *p_f = *p_o = zeros;
  if (!L.peepholes) return;
  const T* p = peep.data_ptr<T>();
  int64_t k = 0;
  if (L.off_i >= 0) *p_i = p + (k++) * L.n;
  if (L.forget == 0) *p_f = p + (k++) * L.n;
  if (L.off_o >= 0) *p_o = p + k * L.n;
}

template <typename T>
std::vector<at::Tensor> forward_impl(const Layout& L, const at::Tensor& xp, const at::Tensor& w,
                                     const at::Tensor& gw, const at::Tensor& peep, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& g0) {
  const int64_t steps = xp.size(0), batch = xp.size(1), gn = xp.size(2), n = L.n;
  at::Tensor acts = xp.clone(at::MemoryFormat::Contiguous);
  at::Tensor cs = at::empty({steps, batch, n}, xp.options());
  at::Tensor ys = at::empty({steps, batch, n}, xp.options());
  at::Tensor hcs = L.output_act ? at::empty({steps, batch, n}, xp.options()) : cs;
  std::vector<T> zeros(n, T(0));
  const T *p_i, *p_f, *p_o;
  peephole_rows<T>(L, peep, zeros.data(), &p_i, &p_f, &p_o);
  T* a = acts.data_ptr<T>();
  T* c = cs.data_ptr<T>();
  T* y = ys.data_ptr<T>();
  T* hc = hcs.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  const T* gwp = L.fgr ? gw.data_ptr<T>() : nullptr;
  const int64_t step_a = batch * gn, step_n = batch * n;
  for (int64_t t = 0; t < steps; ++t) {
    T* at_ = a + t * step_a;
    const T* h_prev = t ? y + (t - 1) * step_n : h0.data_ptr<T>();
    const T* c_prev = t ? c + (t - 1) * step_n : c0.data_ptr<T>();
    gemm<T>('T', 'N', gn, batch, n, wp, n, h_prev, n, T(1), at_, gn);  // a_t += W h_(t-1)
    if (L.fgr) {  // a_t[i, f, o] += G g_(t-1), g = the previous step's gate activations
      const T* g_prev = t ? a + (t - 1) * step_a : g0.data_ptr<T>();
      gemm<T>('T', 'N', 3 * n, batch, 3 * n, gwp, 3 * n, g_prev, t ? gn : 3 * n, T(1), at_, gn);
    }
    forward_rows(L, batch, gn, at_, c_prev, c + t * step_n, hc + t * step_n, y + t * step_n, p_i, p_f,
                 p_o);
  }
  return {acts, cs, ys, hcs};
}

template <typename T>
std::vector<at::Tensor> backward_impl(const Layout& L, const at::Tensor& acts, const at::Tensor& cs,
                                      const at::Tensor& ys, const at::Tensor& hcs, const at::Tensor& w,
                                      const at::Tensor& gw, const at::Tensor& peep, const at::Tensor& h0,
                                      const at::Tensor& c0, const at::Tensor& g0, const at::Tensor& grad_y,
                                      const at::Tensor& grad_c, const at::Tensor& grad_g) {
  const int64_t steps = acts.size(0), batch = acts.size(1), gn = acts.size(2), n = L.n;
  const auto opts = acts.options();
  at::Tensor d_act = at::empty_like(acts);
  at::Tensor dh = at::zeros({batch, n}, opts);
  at::Tensor dc = at::zeros({batch, n}, opts);
  at::Tensor dg = L.fgr ? at::zeros({batch, 3 * n}, opts) : at::Tensor();
  at::Tensor dp = L.peepholes ? at::zeros_like(peep) : at::Tensor();
  std::vector<T> zeros(n, T(0)), dy_buf(n), dc_buf(n);
  const T *p_i, *p_f, *p_o;
  peephole_rows<T>(L, peep, zeros.data(), &p_i, &p_f, &p_o);
  const T* a = acts.data_ptr<T>();
  const T* c = cs.data_ptr<T>();
  const T* hc = hcs.data_ptr<T>();
  T* da = d_act.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  T* dgp = L.fgr ? dg.data_ptr<T>() : nullptr;
  const T* gy = grad_y.defined() ? grad_y.data_ptr<T>() : nullptr;
  const T* gc = grad_c.defined() ? grad_c.data_ptr<T>() : nullptr;
  const T* gg = grad_g.defined() ? grad_g.data_ptr<T>() : nullptr;
  const int64_t step_a = batch * gn, step_n = batch * n;
  BackRows R{};
  R.rows = batch;
  R.gn = gn;
  R.dh = dhp;
  R.dc_next = dc.data_ptr<T>();
  R.dp = L.peepholes ? dp.data_ptr<T>() : nullptr;
  for (int64_t t = steps - 1; t >= 0; --t) {
    if (gg) {
      const T* src = gg + t * batch * 3 * n;
      for (int64_t j = 0; j < batch * 3 * n; ++j) dgp[j] += src[j];
    }
    R.acts = a + t * step_a;
    R.c_prev = t ? c + (t - 1) * step_n : c0.data_ptr<T>();
    R.c = c + t * step_n;
    R.hc = hc + t * step_n;
    R.grad_y = gy ? gy + t * step_n : nullptr;
    R.grad_c = gc ? gc + t * step_n : nullptr;
    R.dg = dgp;
    R.d_act = da + t * step_a;
    backward_rows(L, R, p_i, p_f, p_o, zeros.data(), dy_buf.data(), dc_buf.data());
    gemm<T>('N', 'N', n, batch, gn, w.data_ptr<T>(), n, da + t * step_a, gn, T(0), dhp, n);  // dh = da W
    if (L.fgr)
      gemm<T>('N', 'N', 3 * n, batch, 3 * n, gw.data_ptr<T>(), 3 * n, da + t * step_a, gn, T(0), dgp, 3 * n);
  }
  // weight gradients: one product over all steps (h_prev = h0, y_0, ..., y_(T-2))
  at::Tensor dw = at::empty_like(w);
  T* dwp = dw.data_ptr<T>();
  gemm<T>('N', 'T', n, gn, batch, h0.data_ptr<T>(), n, da, gn, T(0), dwp, n);
  if (steps > 1)
    gemm<T>('N', 'T', n, gn, (steps - 1) * batch, ys.data_ptr<T>(), n, da + step_a, gn, T(1), dwp, n);
  at::Tensor dgw;
  if (L.fgr) {
    dgw = at::empty_like(gw);
    T* p = dgw.data_ptr<T>();
    gemm<T>('N', 'T', 3 * n, 3 * n, batch, g0.data_ptr<T>(), 3 * n, da, gn, T(0), p, 3 * n);
    if (steps > 1)
      gemm<T>('N', 'T', 3 * n, 3 * n, (steps - 1) * batch, a, gn, da + step_a, gn, T(1), p, 3 * n);
  }
  return {d_act, dw, dgw, dp, dh, dc, dg};
}

at::Tensor cont(const at::Tensor& t) { return t.defined() ? t.contiguous() : t; }

void check(const at::Tensor& xp, const at::Tensor& w) {
  TORCH_CHECK(xp.device().is_cpu(), "the C++ LSTM kernels run on the CPU only");
  TORCH_CHECK(xp.dim() == 3 && xp.size(0) > 0, "projected inputs must be (T, B, G*N) with T > 0");
  TORCH_CHECK(w.scalar_type() == xp.scalar_type(), "weights and inputs must share a dtype");
}

void check_shape(const at::Tensor& t, std::initializer_list<int64_t> shape, const char* what) {
  TORCH_CHECK(t.sizes().equals(shape), what, " has shape ", t.sizes(), ", expected ", at::IntArrayRef(shape));
}

// every tensor the loops read through raw pointers must have the size the layout implies
void check_lstm(const Layout& L, int64_t batch, int64_t gn, const at::Tensor& w, const at::Tensor& gw,
                const at::Tensor& peep, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& g0) {
  const int64_t n = L.n;
  const int64_t blocks = (L.off_i >= 0) + (L.forget == 0) + 1 + (L.off_o >= 0);
  TORCH_CHECK(gn == blocks * n, "projected inputs do not match the layout");
  check_shape(w, {gn, n}, "recurrent weight");
  check_shape(h0, {batch, n}, "h0");
  check_shape(c0, {batch, n}, "c0");
  if (L.peepholes) check_shape(peep, {blocks - 1, n}, "peephole");
  if (L.fgr) {
    check_shape(gw, {3 * n, 3 * n}, "gate weight");
    check_shape(g0, {batch, 3 * n}, "g0");
  }
}

std::vector<at::Tensor> lstm_forward(const at::Tensor& xp, const at::Tensor& w, const at::Tensor& gw,
                                     const at::Tensor& peep, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& g0, int64_t n, int64_t off_i, int64_t off_f,
                                     int64_t off_z, int64_t off_o, int64_t forget, bool input_act,
                                     bool output_act, bool peepholes, bool fgr) {
  const Layout L = make_layout(n, off_i, off_f, off_z, off_o, forget, input_act, output_act, peepholes, fgr);
  check(xp, w);
  check_lstm(L, xp.size(1), xp.size(2), w, gw, peep, h0, c0, g0);
  const at::Tensor x = xp.contiguous(), wc = w.contiguous(), gwc = cont(gw), pc = cont(peep);
  const at::Tensor h = h0.contiguous(), c = c0.contiguous(), g = cont(g0);
  if (xp.scalar_type() == at::kFloat) return forward_impl<float>(L, x, wc, gwc, pc, h, c, g);
  TORCH_CHECK(xp.scalar_type() == at::kDouble, "the C++ LSTM kernels take float32 or float64");
  return forward_impl<double>(L, x, wc, gwc, pc, h, c, g);
}

std::vector<at::Tensor> lstm_backward(const at::Tensor& acts, const at::Tensor& cs, const at::Tensor& ys,
                                      const at::Tensor& hcs, const at::Tensor& w, const at::Tensor& gw,
                                      const at::Tensor& peep, const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& g0, const c10::optional<at::Tensor>& grad_y,
                                      const c10::optional<at::Tensor>& grad_c,
                                      const c10::optional<at::Tensor>& grad_g, int64_t n, int64_t off_i,
                                      int64_t off_f, int64_t off_z, int64_t off_o, int64_t forget,
                                      bool input_act, bool output_act, bool peepholes, bool fgr) {
  const Layout L = make_layout(n, off_i, off_f, off_z, off_o, forget, input_act, output_act, peepholes, fgr);
  check(acts, w);
  check_lstm(L, acts.size(1), acts.size(2), w, gw, peep, h0, c0, g0);
  auto opt = [](const c10::optional<at::Tensor>& t) { return t.has_value() ? cont(*t) : at::Tensor(); };
  const at::Tensor gy = opt(grad_y), gc = opt(grad_c), gg = L.fgr ? opt(grad_g) : at::Tensor();
  const int64_t steps = acts.size(0), batch = acts.size(1);
  if (gy.defined()) check_shape(gy, {steps, batch, n}, "grad_y");
  if (gc.defined()) check_shape(gc, {steps, batch, n}, "grad_c");
  if (gg.defined()) check_shape(gg, {steps, batch, 3 * n}, "grad_g");
  const at::Tensor wc = w.contiguous(), gwc = cont(gw), pc = cont(peep);
  const at::Tensor h = h0.contiguous(), c = c0.contiguous(), g = cont(g0);
  if (acts.scalar_type() == at::kFloat)
    return backward_impl<float>(L, acts, cs, ys, hcs, wc, gwc, pc, h, c, g, gy, gc, gg);
  return backward_impl<double>(L, acts, cs, ys, hcs, wc, gwc, pc, h, c, g, gy, gc, gg);
}

// -------------------------------------------------------------------------------------------- GRU
//
// torch's convention (sweep/cells_gru.py): blocks (r, u, n); rec = U s + (0, 0, b_hn);
// r, u = sigma(x_(r,u) + rec_(r,u)); cand = tanh(x_n + r * rec_n); s' = cand + u * (s - cand).

template <typename T>
ODY_INLINE void gru_forward_rows_impl(int64_t rows, int64_t n, const T* xp, const T* rec, const T* b_hn,
                                      const T* h, T* acts, T* rec_n, T* y) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* x = xp + b * 3 * n;
    const T* rr = rec + b * 3 * n;
    const T* hp = h + b * n;
    T* a = acts + b * 3 * n;
    T* rn = rec_n + b * n;
    T* yy = y + b * n;
    for (int64_t j = 0; j < 2 * n; ++j) a[j] = sigm(x[j] + rr[j]);
    for (int64_t j = 0; j < n; ++j) {
      T v = rr[2 * n + j] + b_hn[j];
      rn[j] = v;
      T cand = tanh_(x[2 * n + j] + a[j] * v);
      a[2 * n + j] = cand;
      yy[j] = cand + a[n + j] * (hp[j] - cand);
    }
  }
}

ODY_CLONES void gru_forward_rows(int64_t rows, int64_t n, const float* xp, const float* rec,
                                 const float* b_hn, const float* h, float* acts, float* rec_n, float* y) {
  gru_forward_rows_impl<float>(rows, n, xp, rec, b_hn, h, acts, rec_n, y);
}
ODY_CLONES void gru_forward_rows(int64_t rows, int64_t n, const double* xp, const double* rec,
                                 const double* b_hn, const double* h, double* acts, double* rec_n,
                                 double* y) {
  gru_forward_rows_impl<double>(rows, n, xp, rec, b_hn, h, acts, rec_n, y);
}

// writes d_xp and d_rec (both (B, 3N)) and dy * u (the direct path to s_(t-1)) into dh_out
template <typename T>
ODY_INLINE void gru_backward_rows_impl(int64_t rows, int64_t n, const T* acts, const T* rec_n, const T* h,
                                       const T* grad_y, const T* dh_in, T* d_xp, T* d_rec, T* dh_out,
                                       T* db_hn) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* a = acts + b * 3 * n;
    const T* rn = rec_n + b * n;
    const T* hp = h + b * n;
    const T* gy = grad_y + b * n;
    const T* dhi = dh_in + b * n;
    T* dx = d_xp + b * 3 * n;
    T* dr = d_rec + b * 3 * n;
    T* dho = dh_out + b * n;
    for (int64_t j = 0; j < n; ++j) {
      T r = a[j], u = a[n + j], cand = a[2 * n + j];
      T dy = gy[j] + dhi[j];
      T d_u = dy * (hp[j] - cand) * u * (T(1) - u);
      T d_n = dy * (T(1) - u) * (T(1) - cand * cand);
      T d_r = d_n * rn[j] * r * (T(1) - r);
      T d_rn = d_n * r;
      dx[j] = d_r;
      dx[n + j] = d_u;
      dx[2 * n + j] = d_n;
      dr[j] = d_r;
      dr[n + j] = d_u;
      dr[2 * n + j] = d_rn;
      db_hn[j] += d_rn;
      dho[j] = dy * u;
    }
  }
}

ODY_CLONES void gru_backward_rows(int64_t rows, int64_t n, const float* acts, const float* rec_n,
                                  const float* h, const float* grad_y, const float* dh_in, float* d_xp,
                                  float* d_rec, float* dh_out, float* db_hn) {
  gru_backward_rows_impl<float>(rows, n, acts, rec_n, h, grad_y, dh_in, d_xp, d_rec, dh_out, db_hn);
}
ODY_CLONES void gru_backward_rows(int64_t rows, int64_t n, const double* acts, const double* rec_n,
                                  const double* h, const double* grad_y, const double* dh_in, double* d_xp,
                                  double* d_rec, double* dh_out, double* db_hn) {
  gru_backward_rows_impl<double>(rows, n, acts, rec_n, h, grad_y, dh_in, d_xp, d_rec, dh_out, db_hn);
}

template <typename T>
std::vector<at::Tensor> gru_forward_impl(const at::Tensor& xp, const at::Tensor& w, const at::Tensor& b_hn,
                                         const at::Tensor& h0) {
  const int64_t steps = xp.size(0), batch = xp.size(1), n = h0.size(1);
  at::Tensor acts = at::empty({steps, batch, 3 * n}, xp.options());
  at::Tensor rec_n = at::empty({steps, batch, n}, xp.options());
  at::Tensor ys = at::empty({steps, batch, n}, xp.options());
  std::vector<T> rec(batch * 3 * n);
  const T* x = xp.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  T* y = ys.data_ptr<T>();
  for (int64_t t = 0; t < steps; ++t) {
    const T* h = t ? y + (t - 1) * batch * n : h0.data_ptr<T>();
    gemm<T>('T', 'N', 3 * n, batch, n, wp, n, h, n, T(0), rec.data(), 3 * n);  // rec = U s
    gru_forward_rows(batch, n, x + t * batch * 3 * n, rec.data(), b_hn.data_ptr<T>(), h,
                     acts.data_ptr<T>() + t * batch * 3 * n, rec_n.data_ptr<T>() + t * batch * n,
                     y + t * batch * n);
  }
  return {rec_n, acts, ys};
}

template <typename T>
std::vector<at::Tensor> gru_backward_impl(const at::Tensor& rec_n, const at::Tensor& acts,
                                          const at::Tensor& ys, const at::Tensor& w, const at::Tensor& h0,
                                          const at::Tensor& grad_y) {
  const int64_t steps = acts.size(0), batch = acts.size(1), n = h0.size(1), gn = 3 * n;
  at::Tensor d_xp = at::empty_like(acts);
  at::Tensor d_rec = at::empty_like(acts);
  at::Tensor db_hn = at::zeros({n}, acts.options());
  at::Tensor dh_a = at::zeros({batch, n}, acts.options());
  at::Tensor dh_b = at::empty({batch, n}, acts.options());
  T* dh_in = dh_a.data_ptr<T>();
  T* dh_out = dh_b.data_ptr<T>();
  const T* y = ys.data_ptr<T>();
  T* dr = d_rec.data_ptr<T>();
  for (int64_t t = steps - 1; t >= 0; --t) {
    const T* h = t ? y + (t - 1) * batch * n : h0.data_ptr<T>();
    gru_backward_rows(batch, n, acts.data_ptr<T>() + t * batch * gn, rec_n.data_ptr<T>() + t * batch * n, h,
                      grad_y.data_ptr<T>() + t * batch * n, dh_in, d_xp.data_ptr<T>() + t * batch * gn,
                      dr + t * batch * gn, dh_out, db_hn.data_ptr<T>());
    gemm<T>('N', 'N', n, batch, gn, w.data_ptr<T>(), n, dr + t * batch * gn, gn, T(1), dh_out, n);
    std::swap(dh_in, dh_out);
  }
  at::Tensor dh0 = dh_in == dh_a.data_ptr<T>() ? dh_a : dh_b;
  at::Tensor dw = at::empty_like(w);
  gemm<T>('N', 'T', n, gn, batch, h0.data_ptr<T>(), n, dr, gn, T(0), dw.data_ptr<T>(), n);
  if (steps > 1)
    gemm<T>('N', 'T', n, gn, (steps - 1) * batch, y, n, dr + batch * gn, gn, T(1), dw.data_ptr<T>(), n);
  return {d_xp, dw, db_hn, dh0};
}

std::vector<at::Tensor> gru_forward(const at::Tensor& xp, const at::Tensor& w, const at::Tensor& b_hn,
                                    const at::Tensor& h0) {
  check(xp, w);
  const int64_t n = h0.size(1);
  check_shape(xp, {xp.size(0), h0.size(0), 3 * n}, "GRU projected inputs");
  check_shape(w, {3 * n, n}, "GRU recurrent weight");
  check_shape(b_hn, {n}, "GRU b_hn");
  const at::Tensor x = xp.contiguous(), wc = w.contiguous(), b = b_hn.contiguous(), h = h0.contiguous();
  if (xp.scalar_type() == at::kFloat) return gru_forward_impl<float>(x, wc, b, h);
  TORCH_CHECK(xp.scalar_type() == at::kDouble, "the C++ GRU kernels take float32 or float64");
  return gru_forward_impl<double>(x, wc, b, h);
}

std::vector<at::Tensor> gru_backward(const at::Tensor& rec_n, const at::Tensor& acts, const at::Tensor& ys,
                                     const at::Tensor& w, const at::Tensor& h0, const at::Tensor& grad_y) {
  check(acts, w);
  check_shape(grad_y, {acts.size(0), acts.size(1), h0.size(1)}, "grad_y");
  const at::Tensor wc = w.contiguous(), h = h0.contiguous(), gy = grad_y.contiguous();
  if (acts.scalar_type() == at::kFloat) return gru_backward_impl<float>(rec_n, acts, ys, wc, h, gy);
  return gru_backward_impl<double>(rec_n, acts, ys, wc, h, gy);
}

// ------------------------------------------------------------------------------------------ PLSTM
//
// sweep/cells_pseudo.py: blocks (i, f, z, o); o = sigma(x_o + W_o phi(s)); r = o * phi(s);
// (i, f, z) = (sigma, sigma, tanh)(x_ifz + W_r r); s' = f * s + i * z; output phi(s') = tanh(s').

template <typename T>
ODY_INLINE void plstm_read_rows_impl(int64_t rows, int64_t n, T* acts, const T* phi, T* reads) {
  for (int64_t b = 0; b < rows; ++b) {
    T* ao = acts + b * 4 * n + 3 * n;
    const T* p = phi + b * n;
    T* r = reads + b * n;
    for (int64_t j = 0; j < n; ++j) {
      T o = sigm(ao[j]);
      ao[j] = o;
      r[j] = o * p[j];
    }
  }
}

template <typename T>
ODY_INLINE void plstm_cell_rows_impl(int64_t rows, int64_t n, T* acts, const T* s_prev, T* s, T* y) {
  for (int64_t b = 0; b < rows; ++b) {
    T* a = acts + b * 4 * n;
    const T* sp = s_prev + b * n;
    T* ss = s + b * n;
    T* yy = y + b * n;
    for (int64_t j = 0; j < 2 * n; ++j) a[j] = sigm(a[j]);
    for (int64_t j = 0; j < n; ++j) {
      T z = tanh_(a[2 * n + j]);
      a[2 * n + j] = z;
      T v = a[n + j] * sp[j] + a[j] * z;
      ss[j] = v;
      yy[j] = tanh_(v);
    }
  }
}

// gradient through the cell: fills d_act's (i, f, z) blocks, leaves ds * f (the path to s_(t-1)) in ds
template <typename T>
ODY_INLINE void plstm_cell_back_impl(int64_t rows, int64_t n, const T* acts, const T* s_prev, const T* y,
                                     const T* grad_y, const T* grad_s, const T* d_phi, T* ds, T* d_act) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* a = acts + b * 4 * n;
    const T* sp = s_prev + b * n;
    const T* yy = y + b * n;
    const T* dp = d_phi + b * n;
    T* d = ds + b * n;
    T* da = d_act + b * 4 * n;
    for (int64_t j = 0; j < n; ++j) {
      T i = a[j], f = a[n + j], z = a[2 * n + j];
      T v = d[j] + (grad_s ? grad_s[b * n + j] : T(0));
      v += ((grad_y ? grad_y[b * n + j] : T(0)) + dp[j]) * (T(1) - yy[j] * yy[j]);
      da[j] = v * z * i * (T(1) - i);
      da[n + j] = v * sp[j] * f * (T(1) - f);
      da[2 * n + j] = v * i * (T(1) - z * z);
      d[j] = v * f;
    }
  }
}

// gradient through the read r = o * phi: fills d_act's o block; d_phi = d_read * o (W_o's part follows)
template <typename T>
ODY_INLINE void plstm_read_back_impl(int64_t rows, int64_t n, const T* acts, const T* phi, const T* d_read,
                                     T* d_phi, T* d_act) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* o = acts + b * 4 * n + 3 * n;
    const T* p = phi + b * n;
    const T* dr = d_read + b * n;
    T* dp = d_phi + b * n;
    T* dao = d_act + b * 4 * n + 3 * n;
    for (int64_t j = 0; j < n; ++j) {
      dao[j] = dr[j] * p[j] * o[j] * (T(1) - o[j]);
      dp[j] = dr[j] * o[j];
    }
  }
}

#define ODY_PLSTM_CLONES(T)                                                                                \
  ODY_CLONES void plstm_read_rows(int64_t rows, int64_t n, T* acts, const T* phi, T* reads) {             \
    plstm_read_rows_impl<T>(rows, n, acts, phi, reads);                                                    \
  }                                                                                                        \
  ODY_CLONES void plstm_cell_rows(int64_t rows, int64_t n, T* acts, const T* s_prev, T* s, T* y) {        \
    plstm_cell_rows_impl<T>(rows, n, acts, s_prev, s, y);                                                  \
  }                                                                                                        \
  ODY_CLONES void plstm_cell_back(int64_t rows, int64_t n, const T* acts, const T* s_prev, const T* y,    \
                                  const T* grad_y, const T* grad_s, const T* d_phi, T* ds, T* d_act) {     \
    plstm_cell_back_impl<T>(rows, n, acts, s_prev, y, grad_y, grad_s, d_phi, ds, d_act);                   \
  }                                                                                                        \
  ODY_CLONES void plstm_read_back(int64_t rows, int64_t n, const T* acts, const T* phi, const T* d_read,  \
                                  T* d_phi, T* d_act) {                                                    \
    plstm_read_back_impl<T>(rows, n, acts, phi, d_read, d_phi, d_act);                                     \
  }
ODY_PLSTM_CLONES(float)
ODY_PLSTM_CLONES(double)

template <typename T>
std::vector<at::Tensor> plstm_forward_impl(const at::Tensor& xp, const at::Tensor& w_r, const at::Tensor& w_o,
                                           const at::Tensor& s0) {
  const int64_t steps = xp.size(0), batch = xp.size(1), n = s0.size(1), bn = batch * n;
  at::Tensor acts = xp.clone(at::MemoryFormat::Contiguous);
  at::Tensor reads = at::empty({steps, batch, n}, xp.options());
  at::Tensor ss = at::empty({steps, batch, n}, xp.options());
  at::Tensor ys = at::empty({steps, batch, n}, xp.options());
  at::Tensor phi0 = at::tanh(s0);
  T* a = acts.data_ptr<T>();
  T* r = reads.data_ptr<T>();
  T* s = ss.data_ptr<T>();
  T* y = ys.data_ptr<T>();
  for (int64_t t = 0; t < steps; ++t) {
    T* at_ = a + t * batch * 4 * n;
    const T* phi = t ? y + (t - 1) * bn : phi0.data_ptr<T>();
    const T* s_prev = t ? s + (t - 1) * bn : s0.data_ptr<T>();
    gemm<T>('T', 'N', n, batch, n, w_o.data_ptr<T>(), n, phi, n, T(1), at_ + 3 * n, 4 * n);
    plstm_read_rows(batch, n, at_, phi, r + t * bn);
    gemm<T>('T', 'N', 3 * n, batch, n, w_r.data_ptr<T>(), n, r + t * bn, n, T(1), at_, 4 * n);
    plstm_cell_rows(batch, n, at_, s_prev, s + t * bn, y + t * bn);
  }
  return {acts, reads, ss, ys, phi0};
}

template <typename T>
std::vector<at::Tensor> plstm_backward_impl(const at::Tensor& acts, const at::Tensor& reads,
                                            const at::Tensor& ss, const at::Tensor& ys,
                                            const at::Tensor& phi0, const at::Tensor& w_r,
                                            const at::Tensor& w_o, const at::Tensor& s0,
                                            const at::Tensor& grad_y, const at::Tensor& grad_s) {
  const int64_t steps = acts.size(0), batch = acts.size(1), n = s0.size(1), bn = batch * n, ga = 4 * n;
  at::Tensor d_act = at::empty_like(acts);
  at::Tensor ds = at::zeros({batch, n}, acts.options());
  at::Tensor d_phi = at::zeros({batch, n}, acts.options());
  std::vector<T> d_read(bn);
  const T* a = acts.data_ptr<T>();
  const T* s = ss.data_ptr<T>();
  const T* y = ys.data_ptr<T>();
  const T* gy = grad_y.defined() ? grad_y.data_ptr<T>() : nullptr;
  const T* gs = grad_s.defined() ? grad_s.data_ptr<T>() : nullptr;
  T* da = d_act.data_ptr<T>();
  T* dphi = d_phi.data_ptr<T>();
  for (int64_t t = steps - 1; t >= 0; --t) {
    const T* at_ = a + t * batch * ga;
    T* dat = da + t * batch * ga;
    const T* phi = t ? y + (t - 1) * bn : phi0.data_ptr<T>();
    const T* s_prev = t ? s + (t - 1) * bn : s0.data_ptr<T>();
    plstm_cell_back(batch, n, at_, s_prev, y + t * bn, gy ? gy + t * bn : nullptr, gs ? gs + t * bn : nullptr,
                    dphi, ds.data_ptr<T>(), dat);
    gemm<T>('N', 'N', n, batch, 3 * n, w_r.data_ptr<T>(), n, dat, ga, T(0), d_read.data(), n);
    plstm_read_back(batch, n, at_, phi, d_read.data(), dphi, dat);
    gemm<T>('N', 'N', n, batch, n, w_o.data_ptr<T>(), n, dat + 3 * n, ga, T(1), dphi, n);
  }
  at::Tensor ds0 = ds + d_phi * (1 - phi0 * phi0);
  at::Tensor dw_r = at::empty_like(w_r);
  gemm<T>('N', 'T', n, 3 * n, steps * batch, reads.data_ptr<T>(), n, da, ga, T(0), dw_r.data_ptr<T>(), n);
  at::Tensor dw_o = at::empty_like(w_o);
  gemm<T>('N', 'T', n, n, batch, phi0.data_ptr<T>(), n, da + 3 * n, ga, T(0), dw_o.data_ptr<T>(), n);
  if (steps > 1)
    gemm<T>('N', 'T', n, n, (steps - 1) * batch, y, n, da + batch * ga + 3 * n, ga, T(1),
            dw_o.data_ptr<T>(), n);
  return {d_act, dw_r, dw_o, ds0};
}

std::vector<at::Tensor> plstm_forward(const at::Tensor& xp, const at::Tensor& w_r, const at::Tensor& w_o,
                                      const at::Tensor& s0) {
  check(xp, w_r);
  const int64_t n = s0.size(1);
  check_shape(xp, {xp.size(0), s0.size(0), 4 * n}, "PLSTM projected inputs");
  check_shape(w_r, {3 * n, n}, "PLSTM weight_hh");
  check_shape(w_o, {n, n}, "PLSTM weight_ho");
  const at::Tensor x = xp.contiguous(), wr = w_r.contiguous(), wo = w_o.contiguous(), s = s0.contiguous();
  if (xp.scalar_type() == at::kFloat) return plstm_forward_impl<float>(x, wr, wo, s);
  TORCH_CHECK(xp.scalar_type() == at::kDouble, "the C++ PLSTM kernels take float32 or float64");
  return plstm_forward_impl<double>(x, wr, wo, s);
}

std::vector<at::Tensor> plstm_backward(const at::Tensor& acts, const at::Tensor& reads, const at::Tensor& ss,
                                       const at::Tensor& ys, const at::Tensor& phi0, const at::Tensor& w_r,
                                       const at::Tensor& w_o, const at::Tensor& s0,
                                       const c10::optional<at::Tensor>& grad_y,
                                       const c10::optional<at::Tensor>& grad_s) {
  check(acts, w_r);
  auto opt = [](const c10::optional<at::Tensor>& t) { return t.has_value() ? cont(*t) : at::Tensor(); };
  const at::Tensor gy = opt(grad_y), gs = opt(grad_s);
  for (const at::Tensor* g : {&gy, &gs})
    if (g->defined()) check_shape(*g, {acts.size(0), acts.size(1), s0.size(1)}, "PLSTM gradient");
  const at::Tensor wr = w_r.contiguous(), wo = w_o.contiguous(), s = s0.contiguous();
  if (acts.scalar_type() == at::kFloat)
    return plstm_backward_impl<float>(acts, reads, ss, ys, phi0, wr, wo, s, gy, gs);
  return plstm_backward_impl<double>(acts, reads, ss, ys, phi0, wr, wo, s, gy, gs);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Forward and BPTT loops of the LSTM family, GRU and PLSTM (see sweep/cells_lstm.py)";
  m.def("lstm_forward", &lstm_forward, "forward loop: returns acts, cs, ys, hcs");
  m.def("lstm_backward", &lstm_backward, "BPTT: returns d_act, dw, dgw, dp, dh0, dc0, dg0");
  m.def("gru_forward", &gru_forward, "GRU forward loop: returns rec_n (U_n s + b_hn), acts (r, u, n), ys");
  m.def("gru_backward", &gru_backward, "GRU BPTT: returns d_xp, dw, db_hn, dh0");
  m.def("plstm_forward", &plstm_forward, "PLSTM forward loop: returns acts, reads, ss, ys, phi0");
  m.def("plstm_backward", &plstm_backward, "PLSTM BPTT: returns d_act, dw_r, dw_o, ds0");
  m.def("has_blas", []() { return have_blas<float>() && have_blas<double>(); });
  m.def("use_blas", [](bool on) {
    bool was = use_blas;
    use_blas = on;
    return was;
  }, "call BLAS directly (default) or through at::addmm_; returns the previous setting");
}
