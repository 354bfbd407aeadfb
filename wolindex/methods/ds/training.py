"""DS-Softmax training (Liao, Chen, Lin, Zhou, Wang 2019, "Doubly Sparse: Sparse Mixture of Sparse Experts
for Efficient Softmax Inference", arXiv 1901.10668), in NumPy.

Model. A gate g(h) = softmax(U h + c) over K experts (optionally after one ReLU hidden layer) keeps only its
largest entry (top-1 sparse mixture); expert e holds rows V_e, beta_e (initialised from W, b) for its class
subset S_e, the rows of the other classes being pruned to zero, and its logits are scaled by the kept gate
value:
    p(y | h) = softmax over all D classes of G (V_e[c] . h + beta_e[c])  (0 for c not in S_e),
    e = argmax g(h),  G = g(h)_e,
so a query sent to an expert that lacks its classes has a high loss, and the gate learns from how much
sharpening or flattening its chosen expert helps.

Objective. Cross-entropy on the true labels (when given) plus distillation towards the exact model's top-k
distribution (both weighted); group lasso lambda * sum_c ||(V_e[c], beta_e[c])|| on each expert against the
mean loss of the queries it receives (so lambda means the same at every K: a row survives when the pull of
the expert's own queries on it exceeds lambda); the importance (load-balancing) loss w * CV(sum_batch g)^2
of Shazeer et al. (2017), taken on a softened gate (see _importance_loss).

Optimisation. Adam for the gate. For the expert rows, proximal gradient steps in a per-row metric (proximal
RMSProp, as proximal AdaGrad of Duchi et al. 2011): with P_r the running RMS of row r's gradient norm, the row
moves by -lr g_r / P_r and its norm is then shrunk by lr * lambda / P_r, which sets rows exactly to zero and
keeps the minimiser of the objective while every row moves at a similar relative speed whatever its class
frequency. Experts not touched by a batch owe their shrinkage until next touched (consecutive shrinks of a
row add up exactly). Within a stage a zero row can grow back; at the end of each stage the rows whose norm
is below `prune_below` are pruned from their expert for good.

Mitosis. Training starts with a few experts, then repeatedly clones each expert in two (rows, subset, gate
row; the twins' gate rows are pushed apart, see DSTrainer.split) and continues, so memory follows the
experts' total support rather than K * D * d.

Our additions, each a build setting: (1) capacity_factor > 0: in training each expert takes at most
capacity_factor * B / K queries of a batch, a query overflowing its best expert going to its best expert with
room (as in GShard / Switch), against gate collapse at large K; (2) complete_k > 0: after training, each
expert receives the exact top-complete_k classes of the training queries its gate sends it; (3) classes that
are never a label nor in the teacher's top-k of any training query start in no expert (they would get no
pull against the lasso); after training every class that no expert kept is re-homed (see
DSTrainer.rehome_orphans), so each class stays in at least one expert."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..._numeric import Adam
from .gate import Gate

if TYPE_CHECKING:
    from . import DSBuild

RMS_DECAY = 0.99
LOSS_CELLS = 1 << 21       # values a block of training holds at once: (query, class) logits, gate logits, rows
BALANCE_TEMPERATURE = 4.0


@dataclass
class Expert:
    """One sparse expert: classes (n,) int32 ascending, rows V (n, d) float32, bias (n,) float32; sq (n,)
    running mean of each row's squared gradient norm after `steps` updates; owed lasso shrinkage."""

    classes: np.ndarray
    V: np.ndarray
    bias: np.ndarray
    sq: np.ndarray
    steps: int = 0
    owed_shrink: float = 0.0

    @classmethod
    def of(cls, classes: np.ndarray, W: np.ndarray, b: np.ndarray) -> "Expert":
        return cls(classes, W[classes], b[classes], np.zeros(classes.size))

    def copy(self) -> "Expert":
        return Expert(self.classes.copy(), self.V.copy(), self.bias.copy(), self.sq.copy(), self.steps,
                      self.owed_shrink)

    def add(self, classes: np.ndarray, V: np.ndarray, bias: np.ndarray) -> None:
        """Insert new classes (not yet in the expert) with the given rows, keeping classes sorted."""
        merged = np.r_[self.classes, classes]
        order = np.argsort(merged, kind="stable")
        self.classes = merged[order].astype(np.int32)
        self.V = np.r_[self.V, V][order]
        self.bias = np.r_[self.bias, bias][order]
        self.sq = np.r_[self.sq, np.zeros(classes.size)][order]

    def keep(self, rows: np.ndarray) -> None:
        self.classes, self.V, self.bias, self.sq = self.classes[rows], self.V[rows], self.bias[rows], self.sq[rows]

    def metric(self) -> np.ndarray:
        """P_r: the bias-corrected RMS of each row's gradient norm (1 before any update)."""
        if self.steps == 0:
            return np.ones(self.classes.size)
        return np.sqrt(self.sq / (1.0 - RMS_DECAY ** self.steps)) + 1e-8


class DSTrainer:
    """Holds the gate and experts and runs the mitosis schedule."""

    def __init__(self, W: np.ndarray, b: np.ndarray, H: np.ndarray, labels: np.ndarray | None,
                 teacher_labels: np.ndarray, teacher_probs: np.ndarray, cfg: "DSBuild"):
        """W (D, d), b (D,) the layer; H (N, d) training queries with their labels (N,) or None and the
        exact model's top-k (N, k) labels and probabilities; cfg: the build settings (seed included)."""
        self.W, self.b, self.H = W, b, H
        self.n_classes = W.shape[0]
        self.labels = labels
        self.t_labels, self.t_probs = teacher_labels, teacher_probs
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        D = W.shape[0]
        active = np.zeros(D, bool)
        active[teacher_labels.ravel()] = True
        if labels is not None:
            active[labels] = True
        self.copies = np.where(active, cfg.start_experts, 0).astype(np.int64)
        classes = np.flatnonzero(active).astype(np.int32)
        self.experts = [Expert.of(classes, W, b) for _ in range(cfg.start_experts)]
        self.gate = Gate(W.shape[1], cfg.start_experts, cfg.gate_hidden, self.rng)
        self.gate_opt = Adam(self.gate.params, cfg.gate_lr)
        self.history: list[dict] = []

    # ---- one step -------------------------------------------------------------------------------------
    def _targets(self, e: Expert, rows: np.ndarray) -> np.ndarray:
        """Target weights (len(rows), n_e) over e's classes: label and teacher distribution, where present."""
        n = e.classes.shape[0]
        T = np.zeros((rows.shape[0], n), np.float32)
        cols = [(self.t_labels[rows], self.t_probs[rows] * self.cfg.distill_weight)]
        if self.labels is not None:
            cols.append((self.labels[rows][:, None], np.full((rows.shape[0], 1), self.cfg.label_weight, np.float32)))
        for ids, weights in cols:
            pos = np.searchsorted(e.classes, ids)
            pos_c = np.minimum(pos, n - 1)
            hit = (pos < n) & (e.classes[pos_c] == ids)
            r, j = np.nonzero(hit)
            np.add.at(T, (r, pos_c[r, j]), weights[r, j])
        return T

    def _shrink(self, e: Expert, amount: float) -> None:
        """Group soft-threshold every row (V_e[c], beta_e[c]) of e by amount / P_r (rows can reach exactly
        zero, and grow back while their class is still in e's subset)."""
        if amount <= 0 or e.classes.size == 0:
            return
        norms = np.sqrt((e.V.astype(np.float64) ** 2).sum(axis=1) + e.bias.astype(np.float64) ** 2)
        scale = np.maximum(0.0, 1.0 - amount / e.metric() / np.maximum(norms, 1e-30))
        e.V *= scale[:, None].astype(np.float32)
        e.bias *= scale.astype(np.float32)

    def _prune(self, e: Expert) -> None:
        """Remove from e, for good, the rows whose norm is below prune_below."""
        norms = np.sqrt((e.V.astype(np.float64) ** 2).sum(axis=1) + e.bias.astype(np.float64) ** 2)
        dead = norms < self.cfg.prune_below
        if dead.any():
            self.copies[e.classes[dead]] -= 1
            e.keep(~dead)

    def rehome_orphans(self, route: np.ndarray) -> np.ndarray:
        """Put every class that no expert kept into an expert where it ranks well, evenly: each expert
        takes at most ceil(orphans / K) of them, a class going to the free expert whose training queries'
        mean h gives it the largest original logit w_c . mean_h + b_c. Its row there is zero, as a pruned
        row (the model is unchanged), so the class stays reachable through the index at a bounded cost per
        expert. route (N,): each training query's expert. Returns the re-homed class ids."""
        orphans = np.flatnonzero(self.copies == 0).astype(np.int32)
        if orphans.size == 0:
            return orphans
        K = len(self.experts)
        counts = np.bincount(route, minlength=K)
        means = np.zeros((K, self.H.shape[1]), np.float64)
        np.add.at(means, route, self.H)
        means = (means / np.maximum(counts, 1)[:, None]).astype(np.float32)
        affinity = np.empty((orphans.size, K), np.float32)
        step = max(1, LOSS_CELLS // self.W.shape[1])
        for lo in range(0, orphans.size, step):
            some = orphans[lo:lo + step]
            np.matmul(self.W[some], means.T, out=affinity[lo:lo + step])
            affinity[lo:lo + step] += self.b[some, None]
        home = _balanced_assignment(affinity, capacity=-(-orphans.size // K), overwrite=True)
        for e_id in np.unique(home):
            add = orphans[home == e_id]
            zero_rows = np.zeros((add.size, self.W.shape[1]), np.float32)
            self.experts[e_id].add(add, zero_rows, np.zeros(add.size, np.float32))
        self.copies[orphans] = 1
        return orphans

    def _catch_up(self, e: Expert) -> None:
        """Apply the shrinkage e owes for the steps that did not touch it."""
        self._shrink(e, e.owed_shrink)
        e.owed_shrink = 0.0

    def step(self, rows: np.ndarray) -> float:
        """One training step on the training queries `rows`: route them, update each expert on the queries
        sent to it (forward, loss, proximal step), then the gate. Returns the batch's mean loss."""
        Hb = self.H[rows]
        logits, cache = self.gate.forward(Hb)
        logits, g, chosen = self._route_batch(logits)
        G = g[np.arange(rows.shape[0]), chosen]
        dG, loss = self._update_experts(rows, Hb, chosen, G)
        loss += self._update_gate(logits, g, chosen, dG, cache)
        return loss / rows.shape[0]

    def _route_batch(self, logits: np.ndarray):
        """Gate logits (B, K) -> the logits shifted by each row's max, the gate distribution g (B, K) and each
        query's expert (B,): its top-1, or with capacity_factor > 0 its best expert with room."""
        cfg = self.cfg
        B, K = logits.shape
        logits = logits - logits.max(axis=1, keepdims=True)
        g = np.exp(logits)
        g /= g.sum(axis=1, keepdims=True)
        if cfg.capacity_factor > 0 and K > 1:
            chosen = _balanced_assignment(logits, capacity=int(min(B, np.ceil(cfg.capacity_factor * B / K))))
        else:
            chosen = np.argmax(g, axis=1)
        return logits, g, chosen

    def _update_experts(self, rows, Hb, chosen, G):
        """Each expert's step on the batch queries routed to it (experts without any owe their lasso
        shrinkage). Returns d loss / d G (B,) for the gate and the batch's summed loss."""
        cfg = self.cfg
        B = rows.shape[0]
        dG = np.zeros(B, np.float32)
        loss = 0.0
        order = np.argsort(chosen, kind="stable")
        bounds = np.searchsorted(chosen[order], np.arange(len(self.experts) + 1))
        shrink = cfg.expert_lr * cfg.lasso
        for e_id, e in enumerate(self.experts):
            q = order[bounds[e_id]:bounds[e_id + 1]]
            if q.size == 0 or e.classes.size == 0:
                e.owed_shrink += shrink
                continue
            self._catch_up(e)
            log_likelihood, dG_e, gV, gb = self._expert_gradient(e, Hb[q], G[q], rows[q])
            loss -= log_likelihood
            dG[q] = dG_e / B
            self._proximal_step(e, gV, gb)
            self._shrink(e, shrink)
        return dG, loss

    def _expert_gradient(self, e: Expert, Hq, Gq, rows):
        """Expert e on its queries Hq (n, d) with kept gate values Gq (n,), LOSS_CELLS (query, class) logits
        at a time: the summed log-likelihood of the targets, d loss / d G (n,) times the batch size, and the
        mean gradient of the expert's rows gV (n_e, d) and biases gb (n_e,) over the n queries."""
        n, n_e = Hq.shape[0], e.classes.size
        dG = np.empty(n, np.float32)
        gV = gb = None
        log_likelihood = 0.0
        step = max(1, LOSS_CELLS // n_e)
        for lo in range(0, n, step):
            part = slice(lo, lo + step)
            raw, dz, part_ll = self._expert_loss(e, Hq[part], Gq[part], rows[part])
            log_likelihood += part_ll
            dG[part] = (dz * raw).sum(axis=1)
            dz *= Gq[part, None]                             # d loss / d raw, averaged over the n queries
            dz /= n
            part_gV, part_gb = dz.T @ Hq[part], dz.sum(axis=0)
            if gV is None:
                gV, gb = part_gV, part_gb
            else:
                gV += part_gV
                gb += part_gb
        return log_likelihood, dG, gV, gb

    def _expert_loss(self, e: Expert, Hq, Gq, rows):
        """Expert e's forward pass on queries Hq (n, d) with kept gate values Gq (n,): its raw logits
        (n, n_e), d loss / d (scaled logits) (n, n_e) and the summed log-likelihood of the targets (pruned
        classes count as zero rows, logit 0)."""
        target_mass = self.cfg.distill_weight + (self.cfg.label_weight if self.labels is not None else 0.0)
        raw = Hq @ e.V.T
        raw += e.bias
        z = Gq[:, None] * raw
        top = np.maximum(z.max(axis=1, keepdims=True), 0.0)
        z -= top
        p = np.exp(z)
        Z = p.sum(axis=1, keepdims=True) + (self.n_classes - e.classes.size) * np.exp(-top)  # pruned: logit 0
        T = self._targets(e, rows)
        log_z = np.log(Z)
        t_pruned = target_mass - T.sum(axis=1, keepdims=True)
        log_likelihood = float(np.vdot(T, z) - (T.sum(axis=1, keepdims=True) * log_z).sum()
                               + (t_pruned * (-top - log_z)).sum())
        p /= Z
        p *= target_mass
        p -= T
        return raw, p, log_likelihood

    def _proximal_step(self, e: Expert, gV, gb) -> None:
        """The gradient half of e's proximal RMSProp step (the lasso shrink follows): rows move by
        -lr g_r / P_r, g_r being the row's gradient (gV, gb) averaged over the expert's queries."""
        g_norm2 = (gV.astype(np.float64) ** 2).sum(axis=1) + gb.astype(np.float64) ** 2
        e.sq = RMS_DECAY * e.sq + (1 - RMS_DECAY) * g_norm2
        e.steps += 1
        step = (self.cfg.expert_lr / e.metric()).astype(np.float32)
        e.V -= step[:, None] * gV
        e.bias -= step * gb

    def _update_gate(self, logits, g, chosen, dG, cache) -> float:
        """The gate's backward pass (through G = g[chosen], plus the importance loss on the shifted logits)
        and its Adam step. Returns the batch's importance loss times the batch size (0 when off)."""
        B, K = g.shape
        dg = np.zeros_like(g)
        dg[np.arange(B), chosen] = dG
        dlogits = g * (dg - (g * dg).sum(axis=1, keepdims=True))
        balance = 0.0
        if self.cfg.balance > 0 and K > 1:
            d_balance, balance_loss = _importance_loss(logits, self.cfg.balance)
            dlogits += d_balance
            balance = balance_loss * B
        self.gate_opt.step(self.gate.params, self.gate.backward(dlogits.astype(np.float32), cache))
        return balance

    # ---- schedule -------------------------------------------------------------------------------------
    def settle_all(self) -> None:
        """End of a stage: pay every expert's owed shrinkage, then prune the dead rows."""
        for e in self.experts:
            self._catch_up(e)
            self._prune(e)

    def split(self) -> None:
        """Mitosis: every expert becomes two identical ones. The twins' gate rows are pushed apart along the
        leading principal direction of the training queries the expert receives (split at their mean), so
        that each twin starts with a coherent half of the expert's traffic to specialise on (the paper
        perturbs the twins' gates; a data-driven perturbation makes the split reproducible and balanced)."""
        self.settle_all()
        feats = self.gate.features(self.H)
        route = self.route_training()
        dim = feats.shape[1]
        directions = np.zeros((len(self.experts), dim), np.float32)
        centres = np.zeros((len(self.experts), dim), np.float32)
        margins = []
        for e in range(len(self.experts)):
            X = feats[route == e]
            if X.shape[0] < 2:
                directions[e] = self.rng.standard_normal(dim)
                directions[e] /= np.linalg.norm(directions[e])
                continue
            centres[e] = X.mean(axis=0)
            v = _leading_direction(X - centres[e], self.rng)
            directions[e] = v
            margins.append(float(np.std((X - centres[e]) @ v)))
        # a gate-logit gap of split_margin standard deviations along the split direction
        scale = self.cfg.split_margin / max(float(np.median(margins)) if margins else 1.0, 1e-6)
        twins = []
        for e in self.experts:
            twins += [e, e.copy()]
            self.copies[e.classes] += 1
        self.experts = twins
        self.gate.split(directions, centres, scale)
        self.gate_opt = Adam(self.gate.params, self.cfg.gate_lr)

    def run_epochs(self, epochs: float, verbose: bool, desc: str) -> None:
        from tqdm.auto import tqdm

        started = time.perf_counter()
        N = self.H.shape[0]
        n_steps = max(1, int(round(epochs * N / self.cfg.batch_size)))
        perm = self.rng.permutation(N)
        losses = []
        bar = tqdm(range(n_steps), desc=desc, disable=not verbose, leave=False)
        for s in bar:
            lo = (s * self.cfg.batch_size) % N
            if lo + self.cfg.batch_size > N:
                perm = self.rng.permutation(N)
            rows = perm[lo:lo + self.cfg.batch_size]
            losses.append(self.step(rows))
            if s % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", support=f"{self.mean_support():.0f}")
        self.settle_all()
        self.history.append({"stage": desc, "experts": len(self.experts), "steps": n_steps,
                             "loss": float(np.mean(losses[-50:])), "mean_support": self.mean_support(),
                             "total_support": int(sum(e.classes.size for e in self.experts)),
                             "seconds": time.perf_counter() - started})

    def mean_support(self) -> float:
        return float(np.mean([e.classes.size for e in self.experts]))

    def train(self, verbose: bool) -> None:
        cfg = self.cfg
        stage = 0
        while True:
            k = len(self.experts)
            last = k >= cfg.n_experts
            self.run_epochs(cfg.epochs_per_stage + (cfg.final_epochs if last else 0.0), verbose,
                            f"DS stage {stage}: {k} experts")
            if last:
                break
            self.split()
            stage += 1
        if not all(np.isfinite(p).all() for p in self.gate.params.values()):
            raise ValueError("expert_lr, gate_lr, split_margin: DS training diverged (non-finite gate weights); "
                             "try smaller values")
        route = self.route_training()
        self.completed = self.complete_supports(route)
        self.rehomed = self.rehome_orphans(route)

    def route_training(self) -> np.ndarray:
        """(N,) each training query's expert (the gate's top-1), LOSS_CELLS gate logits at a time."""
        step = max(1, LOSS_CELLS // len(self.experts))
        return np.concatenate([self.gate.route(self.H[lo:lo + step], 1)[:, 0]
                               for lo in range(0, self.H.shape[0], step)])

    def complete_supports(self, route: np.ndarray) -> int:
        """Our addition to the paper (complete_k > 0): add to the expert each training query is routed to
        the query's exact top-complete_k classes it lacks, with their original rows, so that the trained
        gate's own routing finds them. route (N,): each training query's expert. Returns the number of rows
        added."""
        k = self.cfg.complete_k
        if k == 0:
            return 0
        added = 0
        for e_id, e in enumerate(self.experts):
            wanted = np.unique(self.t_labels[route == e_id, :k])
            new = np.setdiff1d(wanted, e.classes, assume_unique=True).astype(np.int32)
            if new.size:
                e.add(new, self.W[new], self.b[new])
                self.copies[new] += 1
                added += new.size
        return added


def _leading_direction(X: np.ndarray, rng: np.random.Generator, iters: int = 30) -> np.ndarray:
    """Unit vector along the largest principal component of the centred rows X (n, d) float32 (power
    iteration in X's dtype: a float64 vector would make NumPy copy all of X to float64 twice an iteration)."""
    v = rng.standard_normal(X.shape[1]).astype(X.dtype)
    for _ in range(iters):
        v = X.T @ (X @ v)
        v /= np.linalg.norm(v) + 1e-30
    return v.astype(np.float32)


def _importance_loss(logits: np.ndarray, weight: float) -> tuple[np.ndarray, float]:
    """Shazeer et al.'s importance loss weight * CV(sum over the batch of the gate distribution)^2, taken on
    the gate softened by BALANCE_TEMPERATURE: a confident gate (g near one-hot) would otherwise pass almost
    no gradient back through its softmax. Returns (d loss / d logits, loss)."""
    B, K = logits.shape
    a = logits / BALANCE_TEMPERATURE
    soft = np.exp(a - a.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    importance = soft.sum(axis=0)
    mu = B / K
    d_soft = np.broadcast_to(weight * 2.0 * (importance - mu) / (K * mu * mu), soft.shape)
    d_logits = soft * (d_soft - (soft * d_soft).sum(axis=1, keepdims=True)) / BALANCE_TEMPERATURE
    return d_logits, weight * float(importance.var() / (mu * mu))


def _balanced_assignment(affinity: np.ndarray, capacity: int, overwrite: bool = False) -> np.ndarray:
    """(n, K) scores -> (n,) column per row, each column used at most `capacity` times (n <= K * capacity):
    in rounds, every unassigned row proposes its best column that still has room, and each column accepts
    its highest-scoring proposals up to its room. overwrite: the scores may be overwritten (no copy)."""
    n, K = affinity.shape
    home = np.full(n, -1, np.int64)
    room = np.full(K, capacity, np.int64)
    score = affinity if overwrite else affinity.copy()
    step = max(1, LOSS_CELLS // K)
    while (home < 0).any():
        todo = np.flatnonzero(home < 0)
        score[:, room == 0] = -np.inf
        choice = np.concatenate([score[todo[lo:lo + step]].argmax(axis=1) for lo in range(0, todo.size, step)])
        order = np.lexsort((-score[todo, choice], choice))
        todo, choice = todo[order], choice[order]
        first = np.searchsorted(choice, choice)  # first proposal to the same column
        accepted = (np.arange(choice.size) - first) < room[choice]
        home[todo[accepted]] = choice[accepted]
        np.subtract.at(room, choice[accepted], 1)
    return home
