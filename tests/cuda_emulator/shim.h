// A CPU stand-in for the CUDA built-ins wolindex/gpu/kernels.cu uses, so the kernels can be compiled by g++
// and run in tests without a GPU. Each CUDA thread of a block is a fiber (ucontext) on one OS thread; a
// scheduler runs every runnable fiber in turn until it reaches a barrier or ends; blocks run one after
// another. __shared__ variables are function statics (one copy for the block's threads), __syncthreads
// is a block barrier, __shfl_xor_sync exchanges values through per-thread slots between two barriers of
// the warp. Threads that ended no longer count at barriers (as on the GPU). A kernel whose barriers can
// never complete (divergent __syncthreads or shuffles) is reported as deadlocked instead of hanging.
#pragma once
#include <ucontext.h>

#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct EmuFiber {
  ucontext_t ctx;
  dim3 tid;
  unsigned warp = 0;
  int waiting = 0;  // 0: runnable, 1: at the block barrier, 2: at its warp's barrier
  bool done = false;
};

struct EmuBlock {
  dim3 bid, bdim, gdim;
  std::vector<EmuFiber> fibers;
  std::vector<unsigned long long> slots;
  std::vector<unsigned> warp_alive, at_warp_barrier;
  unsigned alive = 0, at_block_barrier = 0;
  ucontext_t scheduler;
  std::function<void()> body;
};

inline EmuBlock* emu_block = nullptr;
inline EmuFiber* emu_fiber = nullptr;

#define threadIdx (emu_fiber->tid)
#define blockIdx (emu_block->bid)
#define blockDim (emu_block->bdim)
#define gridDim (emu_block->gdim)
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

inline void emu_release_complete_barriers(unsigned warp) {
  EmuBlock& B = *emu_block;
  if (B.at_block_barrier && B.at_block_barrier == B.alive) {
    B.at_block_barrier = 0;
    for (auto& f : B.fibers)
      if (f.waiting == 1) f.waiting = 0;
  }
  if (B.at_warp_barrier[warp] && B.at_warp_barrier[warp] == B.warp_alive[warp]) {
    B.at_warp_barrier[warp] = 0;
    for (auto& f : B.fibers)
      if (f.waiting == 2 && f.warp == warp) f.waiting = 0;
  }
}

inline void emu_wait(int kind) {
  EmuBlock& B = *emu_block;
  EmuFiber& f = *emu_fiber;
  f.waiting = kind;
  if (kind == 1) ++B.at_block_barrier;
  else ++B.at_warp_barrier[f.warp];
  emu_release_complete_barriers(f.warp);
  swapcontext(&f.ctx, &B.scheduler);
}

inline void __syncthreads() { emu_wait(1); }
inline void __threadfence() {}

template <class T>
T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  EmuBlock& B = *emu_block;
  const unsigned t = (unsigned)(emu_fiber - B.fibers.data()), lane = t & 31;
  unsigned long long bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  B.slots[t] = bits;
  emu_wait(2);
  bits = B.slots[t - lane + (lane ^ (unsigned)lane_mask)];
  emu_wait(2);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

inline unsigned atomicAdd(unsigned* p, unsigned v) {
  unsigned old = *p;
  *p = old + v;
  return old;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  unsigned long long old = *p;
  *p = old + v;
  return old;
}

template <class T>
T __ldcg(const T* p) {
  return *p;
}

inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void emu_entry() {
  emu_block->body();
  EmuBlock& B = *emu_block;
  EmuFiber& f = *emu_fiber;
  f.done = true;
  --B.alive;
  --B.warp_alive[f.warp];
  emu_release_complete_barriers(f.warp);
}  // returns to uc_link: the scheduler

template <class... A, std::size_t... I>
void emu_call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

// Runs kernel<<<grid, block>>> with cuLaunchKernel's argument convention (args[i] points at the value of
// parameter i). Returns 0, 1 for a block size that is not a positive multiple of 32, 2 for a deadlock.
template <class... A>
int emu_launch(void (*kernel)(A...), dim3 grid, dim3 block, void** args) {
  const unsigned n = block.x * block.y * block.z;
  if (n == 0 || n % 32) return 1;
  const std::size_t stack = 1 << 17;
  std::vector<char> stacks(n * stack);
  EmuBlock B;
  B.bdim = block;
  B.gdim = grid;
  B.fibers.resize(n);
  B.slots.resize(n);
  B.body = [&] { emu_call(kernel, args, std::index_sequence_for<A...>{}); };
  emu_block = &B;
  int status = 0;
  for (unsigned bz = 0; bz < grid.z && !status; ++bz)
    for (unsigned by = 0; by < grid.y && !status; ++by)
      for (unsigned bx = 0; bx < grid.x && !status; ++bx) {
        B.bid = dim3{bx, by, bz};
        B.alive = n;
        B.at_block_barrier = 0;
        B.warp_alive.assign(n / 32, 32);
        B.at_warp_barrier.assign(n / 32, 0);
        for (unsigned t = 0; t < n; ++t) {
          EmuFiber& f = B.fibers[t];
          f.tid = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
          f.warp = t / 32;
          f.waiting = 0;
          f.done = false;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = &stacks[t * stack];
          f.ctx.uc_stack.ss_size = stack;
          f.ctx.uc_link = &B.scheduler;
          makecontext(&f.ctx, emu_entry, 0);
        }
        while (B.alive) {
          bool ran = false;
          for (auto& f : B.fibers) {
            if (f.done || f.waiting) continue;
            emu_fiber = &f;
            swapcontext(&B.scheduler, &f.ctx);
            ran = true;
          }
          if (!ran) {
            status = 2;
            break;
          }
        }
      }
  emu_block = nullptr;
  return status;
}
