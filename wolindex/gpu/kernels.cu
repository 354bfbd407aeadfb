// wolindex GPU kernels: top-k selection, fused candidate scoring (small batches) and bucket-tile scoring
// (large batches).
//
// Compiled by NVRTC through CuPy's RawModule; tests also compile this file with g++ against an emulator
// (tests/cuda_emulator), so it keeps to plain C++ plus the CUDA built-ins that emulator provides:
// threadIdx/blockIdx/blockDim/gridDim, __shared__, __syncthreads, __shfl_xor_sync (full warps only),
// atomicAdd on 32- and 64-bit unsigned ints, __threadfence, __ldcg, __int_as_float, __uint_as_float,
// __float_as_uint.
//
// Every kernel runs with WOL_THREADS threads per block. Rankings follow the CPU engine: higher score
// first, ties to the smaller class id; a class met twice (a class in two probed buckets) is kept once.
// Class rows are stored as float32, float16 or bfloat16 (kernels named _f32, _f16, _bf16); queries and
// all arithmetic are float32.

// The constants the host code shares (WOL_THREADS, WOL_KMAX, WOL_DMAX, WOL_TILE_ROWS, WOL_TILE_QUERIES) are
// defined in wolindex/gpu/kernels.py only and passed as -D options (kernels.options()) by every compiler.
#if !defined(WOL_THREADS) || !defined(WOL_KMAX) || !defined(WOL_DMAX) || !defined(WOL_TILE_ROWS) || \
    !defined(WOL_TILE_QUERIES)
#error "compile with the -D options of wolindex.gpu.kernels.options()"
#endif
static_assert(WOL_THREADS % 32 == 0, "WOL_THREADS: whole warps");
static_assert(WOL_KMAX >= 1 && WOL_KMAX <= WOL_THREADS, "WOL_KMAX: one thread writes each selected entry");
static_assert(WOL_THREADS == 256 && WOL_TILE_ROWS == 64 && WOL_TILE_QUERIES == 32,
              "tile_candidates maps 16 x 16 threads onto WOL_TILE_ROWS x WOL_TILE_QUERIES as 4 x 2 each");
#define WOL_WARPS (WOL_THREADS / 32)
#define WOL_NO_ID 0x7fffffff  // id of an empty list slot: ranks after every class at equal score
#define WOL_TILE_STEP 32      // bucket-tile kernel: dimension step

__device__ __forceinline__ float wol_neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ bool wol_better(float s, int i, float t, int j) {
  return s > t || (s == t && i < j);
}

// Row storage: get(p, i) is element i of a row array as float32.
struct RowsF32 {
  typedef float T;
  static __device__ __forceinline__ float get(const float* p, long long i) { return p[i]; }
};
struct RowsBF16 {
  typedef unsigned short T;
  static __device__ __forceinline__ float get(const unsigned short* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
  }
};
struct RowsF16 {
  typedef unsigned short T;
  static __device__ __forceinline__ float get(const unsigned short* p, long long i) {
    unsigned int h = p[i];
    unsigned int sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
      float f = (float)mantissa * 5.9604644775390625e-8f;
      return sign ? -f : f;
    }
    if (exponent == 31) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
    return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  }
};

// One thread's k best (score, class) pairs, best first, classes distinct; empty slots hold (-inf, WOL_NO_ID).
struct TopList {
  float s[WOL_KMAX];
  int id[WOL_KMAX];
  int k;

  __device__ void init(int k_) {
    k = k_;
    for (int j = 0; j < k; ++j) {
      s[j] = wol_neg_inf();
      id[j] = WOL_NO_ID;
    }
  }

  __device__ void offer(float v, int c) {
    if (!wol_better(v, c, s[k - 1], id[k - 1])) return;
    int j = k - 1;
    while (j > 0 && wol_better(v, c, s[j - 1], id[j - 1])) --j;
    if (j > 0 && s[j - 1] == v && id[j - 1] == c) return;  // already held
    for (int t = k - 1; t > j; --t) {
      s[t] = s[t - 1];
      id[t] = id[t - 1];
    }
    s[j] = v;
    id[j] = c;
  }
};

// A (score, class) pair as one 64-bit key whose unsigned order is the ranking: the score's bits made
// monotonic in the high half, WOL_NO_ID - class in the low half (equal scores: the smaller class first).
__device__ __forceinline__ unsigned long long wol_key(float s, int i) {
  unsigned int u = __float_as_uint(s == 0.0f ? 0.0f : s);  // -0 ranks as +0, as on the CPU
  u ^= (u >> 31) ? 0xffffffffu : 0x80000000u;
  return ((unsigned long long)u << 32) | (unsigned int)(WOL_NO_ID - i);
}

__device__ __forceinline__ float wol_key_score(unsigned long long key) {
  unsigned int u = (unsigned int)(key >> 32);
  u ^= (u >> 31) ? 0x80000000u : 0xffffffffu;
  return __uint_as_float(u);
}

__device__ __forceinline__ int wol_key_class(unsigned long long key) {
  return WOL_NO_ID - (int)(key & 0xffffffffu);
}

// The k best distinct pairs over all the block's thread lists, best first, into sel_s / sel_i (shared,
// k entries; empty: -inf / -1). Each round takes the largest head key in the block (warp butterflies, then
// the warps' winners) and every thread whose head is that pair pops it, so a class held by several
// threads is written once. Every thread of the block calls it; the lists are consumed.
__device__ void block_select(TopList& list, float* sel_s, int* sel_i) {
  __shared__ unsigned long long warp_best[WOL_WARPS];
  __shared__ unsigned long long best;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, k = list.k;
  int head = 0;
  for (int written = 0; written < k; ++written) {
    unsigned long long key = head < k ? wol_key(list.s[head], list.id[head]) : wol_key(wol_neg_inf(), WOL_NO_ID);
    const unsigned long long mine = key;
    for (int offset = 16; offset > 0; offset >>= 1) {
      unsigned long long other = __shfl_xor_sync(0xffffffffu, key, offset);
      key = other > key ? other : key;
    }
    if (lane == 0) warp_best[warp] = key;
    __syncthreads();
    if (tid == 0) {
      unsigned long long b = warp_best[0];
      for (int w = 1; w < WOL_WARPS; ++w) b = warp_best[w] > b ? warp_best[w] : b;
      best = b;
      const int c = wol_key_class(b);
      sel_s[written] = c == WOL_NO_ID ? wol_neg_inf() : wol_key_score(b);
      sel_i[written] = c == WOL_NO_ID ? -1 : c;
    }
    __syncthreads();
    if (mine == best && wol_key_class(mine) != WOL_NO_ID) ++head;
  }
  __syncthreads();
}

// Block-partial lists -> one list: called by every block of row `row` after it wrote its k partial pairs
// to part_s / part_i[(row * n_parts + part) * k + j]; the last block of the row to arrive merges all
// n_parts partials into out_s / out_l[row * k + j] (int64 classes, -1 for none) and re-arms counters[row].
__device__ void merge_when_last(int row, int n_parts, int k, const float* part_s, const int* part_i,
                                unsigned int* counters, float* out_s, long long* out_l) {
  __shared__ int is_last;
  __shared__ float sel_s[WOL_KMAX];
  __shared__ int sel_i[WOL_KMAX];
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(&counters[row], 1u) == (unsigned int)(n_parts - 1);
  __syncthreads();
  if (!is_last) return;
  TopList list;
  list.init(k);
  const long long base = (long long)row * n_parts * k;
  for (int e = threadIdx.x; e < n_parts * k; e += WOL_THREADS) {
    int c = __ldcg(part_i + base + e);
    if (c >= 0) list.offer(__ldcg(part_s + base + e), c);
  }
  block_select(list, sel_s, sel_i);
  if ((int)threadIdx.x < k) {
    out_s[(long long)row * k + threadIdx.x] = sel_s[threadIdx.x];
    out_l[(long long)row * k + threadIdx.x] = sel_i[threadIdx.x];
  }
  if (threadIdx.x == 0) counters[row] = 0;
}

// Writes the block's selection as partial `part` of row `row`, then merges when last (see above).
__device__ void finish_part(TopList& list, int row, int part, int n_parts, float* part_s, int* part_i,
                            unsigned int* counters, float* out_s, long long* out_l) {
  __shared__ float sel_s[WOL_KMAX];
  __shared__ int sel_i[WOL_KMAX];
  const int k = list.k;
  block_select(list, sel_s, sel_i);
  if ((int)threadIdx.x < k) {
    long long o = ((long long)row * n_parts + part) * k + threadIdx.x;
    part_s[o] = sel_s[threadIdx.x];
    part_i[o] = sel_i[threadIdx.x];
  }
  merge_when_last(row, n_parts, k, part_s, part_i, counters, out_s, out_l);
}

// Top-k of each row of a score matrix. Row r holds entries [start_r, start_r + len_r) of scores, where
// start_r = row_ptr[r] and len_r = row_ptr[r + 1] - start_r when row_ptr is given, else r * n_cols and
// n_cols (a dense row-major matrix);
// entry e of the row is class ids[start_r + e] when ids is given (ids < 0 are skipped), else
// e + id_offset; bias[e] is added when bias is given. Grid (n_rows, n_parts): block (r, g) takes the g-th
// of n_parts equal slices of row r; the row's last block merges. part_s / part_i: (n_rows, n_parts, k)
// scratch; counters: (n_rows,) zeros; out_s (n_rows, k) float32, out_l (n_rows, k) int64.
extern "C" __global__ void topk_rows(const float* scores, const int* ids, const float* bias,
                                     const long long* row_ptr, long long n_cols, int id_offset,
                                     int k, float* part_s, int* part_i, unsigned int* counters, float* out_s,
                                     long long* out_l) {
  const int row = blockIdx.x, part = blockIdx.y, n_parts = gridDim.y;
  const long long start = row_ptr ? row_ptr[row] : (long long)row * n_cols;
  const long long len = row_ptr ? row_ptr[row + 1] - start : n_cols;
  const long long slice = (len + n_parts - 1) / n_parts;
  const long long lo = slice * part, hi = lo + slice < len ? lo + slice : len;
  TopList list;
  list.init(k);
  for (long long e = lo + threadIdx.x; e < hi; e += WOL_THREADS) {
    int c = ids ? ids[start + e] : (int)e + id_offset;
    if (c < 0) continue;
    float v = scores[start + e];
    if (bias) v += bias[e];
    list.offer(v, c);
  }
  finish_part(list, row, part, n_parts, part_s, part_i, counters, out_s, out_l);
}

// Fused candidate search, one launch: grid (N, n_parts). Query q's candidates are the entries of its probed
// buckets probes[q * m + j] (-1: none), bucket c holding entries [indptr[c], indptr[c + 1]): entry p is
// class indices[p] with row W[p] (d elements) and bias b[p] (rows packed bucket by bucket). Block (q, g)
// scores the g-th slice of that concatenated list: each warp a row at a time (lanes split the dot
// product), each lane keeping the rows it is dealt in its own list. n_scored[q] = entries scored (a class
// in two probed buckets counts twice); the rest as topk_rows.
template <class R>
__device__ void fused_candidates(const typename R::T* W, const float* b, const float* H, int d, const int* probes,
                                 int m, const long long* indptr, const int* indices, int k, float* part_s,
                                 int* part_i, unsigned int* counters, float* out_s, long long* out_l,
                                 long long* n_scored) {
  __shared__ float h[WOL_DMAX];
  __shared__ unsigned long long total;
  const int q = blockIdx.x, part = blockIdx.y, n_parts = gridDim.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int* my_probes = probes + (long long)q * m;
  if (tid == 0) total = 0;
  for (int t = tid; t < d; t += WOL_THREADS) h[t] = H[(long long)q * d + t];
  __syncthreads();
  for (int j = tid; j < m; j += WOL_THREADS) {
    int c = my_probes[j];
    if (c >= 0) atomicAdd(&total, (unsigned long long)(indptr[c + 1] - indptr[c]));
  }
  __syncthreads();
  const long long n = (long long)total;
  const long long slice = (n + n_parts - 1) / n_parts;
  const long long lo = slice * part, hi = lo + slice < n ? lo + slice : n;
  TopList list;
  list.init(k);
  // walk the probed buckets: slot j covers entries [base, base + size) of the concatenation
  int j = 0;
  long long base = 0, size = 0;
  int dealt = 0;
  for (long long e = lo + warp; e < hi; e += WOL_WARPS) {
    while (true) {
      int c = j < m ? my_probes[j] : -1;
      size = c >= 0 ? indptr[c + 1] - indptr[c] : 0;
      if (e < base + size) break;
      base += size;
      ++j;
    }
    const long long p = indptr[my_probes[j]] + (e - base);
    const typename R::T* w = W + p * d;
    float acc = 0.0f;
    for (int t = lane; t < d; t += 32) acc += R::get(w, t) * h[t];
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (lane == (dealt & 31)) list.offer(acc + b[p], indices[p]);
    ++dealt;
  }
  if (tid == 0 && part == 0) n_scored[q] = n;
  finish_part(list, q, part, n_parts, part_s, part_i, counters, out_s, out_l);
}

// Bucket-tile scoring for large batches: work item `it` pairs bucket item_bucket[it] with item_count[it]
// (<= WOL_TILE_QUERIES) queries, pair_query[item_first[it] + i]; block (it, y) multiplies rows
// [y * WOL_TILE_ROWS, (y + 1) * WOL_TILE_ROWS) of the bucket by those queries (a shared-memory tile product,
// each row read once for all of them) and writes score + bias and the class id of the bucket's e-th entry
// for pair i to out_s / out_i[pair_offset[item_first[it] + i] + e].
template <class R>
__device__ void tile_candidates(const typename R::T* W, const float* b, const float* H, int d,
                                const long long* indptr, const int* indices, const int* item_bucket,
                                const long long* item_first, const int* item_count, const long long* pair_query,
                                const long long* pair_offset, float* out_s, int* out_i) {
  __shared__ float w_tile[WOL_TILE_ROWS][WOL_TILE_STEP + 1];
  __shared__ float h_tile[WOL_TILE_QUERIES][WOL_TILE_STEP + 1];
  const int it = blockIdx.x, tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int bucket = item_bucket[it], n_q = item_count[it];
  const long long first = item_first[it];
  const long long row0 = indptr[bucket] + (long long)blockIdx.y * WOL_TILE_ROWS, row_end = indptr[bucket + 1];
  if (row0 >= row_end) return;
  float acc[4][2];
  for (int a = 0; a < 4; ++a) acc[a][0] = acc[a][1] = 0.0f;
  for (int t0 = 0; t0 < d; t0 += WOL_TILE_STEP) {
    for (int e = tid; e < WOL_TILE_ROWS * WOL_TILE_STEP; e += WOL_THREADS) {
      int r = e / WOL_TILE_STEP, t = e % WOL_TILE_STEP;
      long long row = row0 + r;
      w_tile[r][t] = row < row_end && t0 + t < d ? R::get(W, row * d + t0 + t) : 0.0f;
    }
    for (int e = tid; e < WOL_TILE_QUERIES * WOL_TILE_STEP; e += WOL_THREADS) {
      int i = e / WOL_TILE_STEP, t = e % WOL_TILE_STEP;
      h_tile[i][t] = i < n_q && t0 + t < d ? H[pair_query[first + i] * d + t0 + t] : 0.0f;
    }
    __syncthreads();
    for (int t = 0; t < WOL_TILE_STEP; ++t) {
      float h0 = h_tile[ty][t], h1 = h_tile[ty + 16][t];
      for (int a = 0; a < 4; ++a) {
        float w = w_tile[tx + 16 * a][t];
        acc[a][0] += w * h0;
        acc[a][1] += w * h1;
      }
    }
    __syncthreads();
  }
  for (int a = 0; a < 4; ++a) {
    long long row = row0 + tx + 16 * a;
    if (row >= row_end) continue;
    for (int c = 0; c < 2; ++c) {
      int i = ty + 16 * c;
      if (i >= n_q) continue;
      long long o = pair_offset[first + i] + (row - indptr[bucket]);
      out_s[o] = acc[a][c] + b[row];
      out_i[o] = indices[row];
    }
  }
}

#define WOL_ROW_KERNELS(SUFFIX, R)                                                                            \
  extern "C" __global__ void fused_candidates_##SUFFIX(                                                       \
      const R::T* W, const float* b, const float* H, int d, const int* probes, int m, const long long* indptr, \
      const int* indices, int k, float* part_s, int* part_i, unsigned int* counters, float* out_s,            \
      long long* out_l, long long* n_scored) {                                                                \
    fused_candidates<R>(W, b, H, d, probes, m, indptr, indices, k, part_s, part_i, counters, out_s, out_l,   \
                        n_scored);                                                                            \
  }                                                                                                           \
  extern "C" __global__ void tile_candidates_##SUFFIX(                                                        \
      const R::T* W, const float* b, const float* H, int d, const long long* indptr, const int* indices,      \
      const int* item_bucket, const long long* item_first, const int* item_count, const long long* pair_query, \
      const long long* pair_offset, float* out_s, int* out_i) {                                               \
    tile_candidates<R>(W, b, H, d, indptr, indices, item_bucket, item_first, item_count, pair_query,          \
                       pair_offset, out_s, out_i);                                                            \
  }

WOL_ROW_KERNELS(f32, RowsF32)
WOL_ROW_KERNELS(f16, RowsF16)
WOL_ROW_KERNELS(bf16, RowsBF16)
