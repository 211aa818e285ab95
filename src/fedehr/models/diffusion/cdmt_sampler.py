"""CDMT-EHR's fast CPU sampler: the Euler path of ``cdmt.sample`` re-laid out for speed (the model, its schedule
use, loss and the reference sampler on ``CDMT.forward`` are in cdmt.py).

* ``_FastEuler``: the reference path's N + 1 network evaluations on a feature-major state Z = c_in ⊙ x, with the
  Euler step folded into per-element constants, FiLM tabulated per (step, class) and classifier-free guidance in
  one pass (the y and ∅ halves mixed in the last hidden state); tested equal to ``cdmt._sample_reference``.
* ``_BiGRU``: nn.GRU(bidirectional) rewritten for inference (both directions batched, tanh via σ).
* Optionally with bfloat16 matrix products (``matmul`` of cdmt.sample; float32 state).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F_
from torch import nn

from fedehr.models.diffusion import edm
from fedehr.models.diffusion.cdmt import _U_MIN, CDMT


class _BiGRU:
    """Inference form of one nn.GRU(H, h, bidirectional) layer on feature-major inputs (H, S, B).

    Both directions advance in one batched step (the backward one reads hour S − 1 − k through a strided view).
    tanh(a) = 2σ(2a) − 1 (PyTorch's CPU tanh is several times slower than its sigmoid), and the state is kept as
    v = (h + 1)/2, so h' = n + z(h − n) becomes one lerp, v' = lerp(σ(2a), v, z); the weights absorb the
    rescaling. Returns v (H, S, B) = (GRU output + 1)/2; LayerNorm(v) with ε/4 equals LayerNorm(output) with ε.
    """

    def __init__(self, gru: nn.GRU, gemm: torch.dtype = torch.float32) -> None:
        h = gru.hidden_size
        w_ih, b_ih, w_hh, b_n = [], [], [], []
        for sfx in ("_l0", "_l0_reverse"):  # loop over the two directions; gate rows r | z | n
            wi, bi, wh, bh = (getattr(gru, name + sfx).detach().clone()
                              for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh"))
            for t in (wi, bi, wh, bh):
                t[2 * h:] *= 2  # n gate: σ(2a)
            bh = bh - wh.sum(dim=1)  # W h + b = 2W v + (b − W·1)
            bi[:2 * h] += bh[:2 * h]  # r, z recurrent biases join the input gates
            w_ih.append(wi)
            b_ih.append(bi[:, None])
            w_hh.append(2 * wh)
            b_n.append(bh[2 * h:, None])
        self.h = h
        self.w_ih, self.b_ih = torch.cat(w_ih), torch.cat(b_ih)  # (6h, H), (6h, 1)
        if gemm != torch.float32:  # the bias joins the low-precision product as a column against a row of ones
            self.w_ih = torch.cat([self.w_ih, self.b_ih], dim=1).to(gemm)  # (6h, H + 1)
        self.w_hh, self.b_n = torch.stack(w_hh), torch.stack(b_n)[:, :, None]  # (2, 3h, h), (2, h, 1, 1)

    def __call__(self, x: torch.Tensor, ws: dict[str, Any]) -> torch.Tensor:
        h = self.h
        g, g_n = ws["g"], ws["g_n"]  # (2, 3h, S, B), (2, h, S, B)
        if self.w_ih.dtype == torch.float32:
            torch.addmm(self.b_ih, self.w_ih, x.flatten(1), out=g.view(6 * h, -1))
            g_n.copy_(g[:, 2 * h:])
            g[:, 2 * h:] = self.b_n  # the n gate's recurrent bias is multiplied by r, so it stays in the step
        else:  # low-precision product (see _FastEuler); g's n rows hold b_n from the workspace on
            ws["x16"][:-1].copy_(x.flatten(1))
            prod = torch.mm(self.w_ih, ws["x16"], out=ws["g16"]).view(2, 3 * h, -1)
            g.view(2, 3 * h, -1)[:, :2 * h].copy_(prod[:, :2 * h])
            g_n.view(2, h, -1).copy_(prod[:, 2 * h:])
        pre, a = ws["pre"], ws["a"]  # (2, 3h, B), (2, h, B)
        rz, r, z, n = pre[:, :2 * h], pre[:, :h], pre[:, h:2 * h], pre[:, 2 * h:]
        v = ws["v0"]
        for g_k, gn_k, out_k in zip(ws["g_steps"], ws["gn_steps"], ws["out_steps"], strict=True):  # hours
            torch.baddbmm(g_k, self.w_hh, v, out=pre)
            rz.sigmoid_()
            torch.addcmul(gn_k, r, n, out=a).sigmoid_()
            v = torch.lerp(a, v, z, out=out_k)
        return ws["out"].view(2 * h, *x.shape[1:])

    def workspace(self, s: int, b: int, like: torch.Tensor) -> dict[str, Any]:
        h = self.h
        g, g_n, out = (like.new_empty(2, k, s, b) for k in (3 * h, h, h))
        g[:, 2 * h:] = self.b_n

        def steps(t: torch.Tensor) -> list[torch.Tensor]:
            """(2, k, S, B) → per step k the (2, k, B) view of hour k (forward) and hour S − 1 − k (backward)."""
            rows = t.shape[1]
            return [t.as_strided((2, rows, b), ((rows * s + s - 1 - 2 * i) * b, s * b, 1), i * b)
                    for i in range(s)]

        return {"g": g, "g_n": g_n, "out": out, "g_steps": steps(g), "gn_steps": steps(g_n), "out_steps": steps(out),
                "pre": like.new_empty(2, 3 * h, b), "a": like.new_empty(2, h, b), "v0": like.new_full((2, h, b), 0.5),
                "x16": like.new_ones(self.w_ih.shape[1], s * b, dtype=self.w_ih.dtype),  # last row: ones
                "g16": like.new_empty(6 * h, s * b, dtype=self.w_ih.dtype)}


class _FastEuler:
    """CPU Euler sampler: the reference path's N + 1 network evaluations, re-laid out for speed (to float32
    rounding; tested against ``_sample_reference``).

    * The state is Z = c_in ⊙ x, the network's input, feature-major (Q, S, B): Q = p·P rows per step (per hour of
      a patch: numeric | binary embeddings as (d_e, F_2) | multi-class embeddings as (F_m, d_e)), S = T/p, stays
      last. Every linear layer is then one GEMM over S·B columns and every channel group a contiguous slice.
    * The Euler step x' = D + r(x − D), r = σ_{k+1}/σ_k, and the rescaling to Z' = c_in' x' are folded into
      per-element constants: numeric Z' = a Z + b F_θ; binary Z' = c₀ + c₁ σ(ℓ) + ρ Z; multi-class Z' = m ê + ρ Z.
    * Conditioning depends only on (step, class): its FiLM scale and shift are tabulated once.
    * Guidance: the y and ∅ passes share the input projection and are mixed in the last hidden state (the heads
      are linear: (1 + w)·head(h_y) − w·head(h_∅) = head((1 + w)h_y − w h_∅)).
    * Buffers are reused across steps: fresh multi-MB tensors per operation cost page faults on CPU.
    * ``gemm`` = bfloat16 (cdmt.matmul_dtype): the input projection, the BiGRU's input gates and the heads
      multiply bfloat16 operands into bfloat16 products, the latter two with their bias as one more weight
      column against a row of ones; the state, the recurrence, LayerNorm and FiLM stay float32.
    """

    def __init__(self, model: CDMT, steps: int, w: float, u_grid: torch.Tensor, sigmas: torch.Tensor,
                 gemm: torch.dtype = torch.float32) -> None:
        cfg, dims = model.cfg, model.dims
        self.model, self.w, self.steps = model, w, steps
        p, de = cfg.patch, cfg.embed_dim
        self.p, self.s, self.t = p, dims.n_bins // p, dims.n_bins
        n, nb, nm, k = dims.n_num, model.n_bin, model.n_multi, model.k_max
        self.n, self.nb, self.nm, self.k, self.de, self.width = n, nb, nm, k, de, model.width
        self.hidden = cfg.hidden
        # State rows: binary embeddings (F_2, d_e) → (d_e, F_2), so σ(ℓ) (F_2, S, B) broadcasts over d_e.
        cols = list(range(n)) + [n + f * de + d for d in range(de) for f in range(nb)] + \
            list(range(n + nb * de, model.width))
        self.perm = torch.tensor([j * model.width + c for j in range(p) for c in cols])  # (Q,)
        self._constants(model, sigmas)
        self.gemm = gemm
        self.w_in = model.in_proj.weight[:, self.perm].contiguous().to(gemm)  # (H, Q)
        self.b_in = (model.in_proj.bias + model.hour).t()[:, :, None].contiguous()  # (H, S, 1)
        c_noise = 0.25 * u_grid.clamp_min(_U_MIN).log() * 1000
        cond = F_.silu(model.noise_mlp(edm.sinusoidal_embedding(c_noise, cfg.noise_dim))[:, None, :]
                       + model.class_emb.weight[None])  # (N + 1, classes + 1, cond)
        self.film = [f(cond) + torch.cat([torch.ones(cfg.hidden), torch.zeros(cfg.hidden)]) for f in model.films]
        self.rnn = [_BiGRU(g, gemm) if isinstance(g, nn.GRU) else g for g in model.grus]
        self.eps = [nrm.eps for nrm in model.norms]
        # Heads, one row block per hour of the patch: numeric | binary logit | multi-class logits (F_m, K).
        rows = [r for j in range(p) for r in ([(model.head_num, j * n + f) for f in range(n)]
                                              + [(model.head_bin, j * nb + f) for f in range(nb)]
                                              + [(model.head_multi, j * nm * k + i) for i in range(nm * k)])]
        self.w_head = torch.stack([lin.weight[i] for lin, i in rows])  # (p·R, H)
        self.b_head = torch.stack([lin.bias[i] for lin, i in rows])[:, None]  # (p·R, 1)
        if gemm != torch.float32:  # bias as a column against a row of ones (see _BiGRU)
            self.w_head = torch.cat([self.w_head, self.b_head], dim=1).to(gemm)  # (p·R, H + 1)
        self.multi_valid = model.multi_valid[:, :, None, None]  # (F_m, K, 1, 1)
        self.e_multi = model.embeddings()[1][:, :, :, None, None]  # (F_m, K, d_e, 1, 1)

    def _constants(self, model: CDMT, sigmas: torch.Tensor) -> None:
        """Per-element constants of every step, each (N or N + 1, p, rows, S, 1) (see the class docstring)."""
        p, s, n, nb, de = self.p, self.s, self.n, self.nb, self.de
        sig = sigmas.reshape(len(sigmas), s, -1)[:, :, self.perm].transpose(1, 2)  # (N + 1, Q, S)
        sig = sig.reshape(len(sigmas), p, self.width, s, 1)
        c_skip, c_out, c_in, _ = edm.preconditioning(sig, model.cfg.sigma_data)
        r = sig[1:] / sig[:-1]
        rho = c_in[1:] / c_in[:-1]
        on_z = rho * torch.cat([(c_skip[:-1] + r * (1 - c_skip[:-1]))[:, :, :n], r[:, :, n:]], dim=2)
        on_out = c_in[1:] * (1 - r) * torch.cat([c_out[:-1, :, :n], torch.ones_like(r[:, :, n:])], dim=2)
        self.a, self.b = on_z[:, :, :n], on_out[:, :, :n]
        e_bin = model.embeddings()[0]  # (F_2, 2, d_e)
        e0, e1 = (e_bin[:, i].t()[None, :, :, None, None] for i in (0, 1))  # (1, d_e, F_2, 1, 1)
        shape = (len(r), p, de, nb, s, 1)
        self.rho_bin = on_z[:, :, n:n + nb * de].reshape(shape)
        self.c0 = on_out[:, :, n:n + nb * de].reshape(shape) * e0
        self.c1 = on_out[:, :, n:n + nb * de].reshape(shape) * (e1 - e0)
        shape = (len(r), p, self.nm, de, s, 1)
        self.rho_multi, self.m = (t[:, :, n + nb * de:].reshape(shape) for t in (on_z, on_out))
        self.z0 = c_in[0] * sig[0]  # x_0 = σ_0 ε → Z_0 = c_in σ_0 ε
        self.final = (c_skip[-1, :, :n] / c_in[-1, :, :n], c_out[-1, :, :n])

    def _workspace(self, b: int, b2: int) -> dict[str, Any]:
        s, h, like = self.s, self.hidden, self.b_in
        ws: dict[str, Any] = {"b": b, "b2": b2, "z": like.new_empty(self.p * self.width, s, b),
                              "z_next": like.new_empty(self.p * self.width, s, b), "h": like.new_empty(h, s, b2),
                              "r": like.new_empty(h, s, b2), "r2": like.new_empty(h, s, b2),
                              "mean": like.new_empty(1, s, b2), "avg": like.new_full((1, h), 1.0 / h),
                              "out": like.new_empty(len(self.w_head), s, b),
                              "p_bin": like.new_empty(self.p, 1, self.nb, s, b),
                              "e_multi": like.new_empty(self.p, self.nm, self.k, s, b),
                              "e_sum": like.new_empty(self.p, self.nm, 1, s, b),
                              "e_hat": like.new_empty(self.p, self.nm, self.de, s, b)}
        if self.gemm != torch.float32:  # GEMM operands and products (h16's last row stays ones: the bias row)
            ws.update({key: like.new_ones(rows, s * b, dtype=self.gemm) for key, rows in
                       (("z16", self.p * self.width), ("h16", h + 1), ("hin16", h), ("out16", len(self.w_head)))})
        ws["rnn"] = [g.workspace(s, b2, like) if isinstance(g, _BiGRU) else None for g in self.rnn]
        return ws

    def network(self, ws: dict[str, Any], k: int) -> torch.Tensor:
        """One (guided) evaluation at step k on ws["z"]: the heads' outputs (p·R, S, B)."""
        b, b2, h = ws["b"], ws["b2"], ws["h"]
        hid = self.hidden
        if self.gemm != torch.float32:
            x = torch.mm(self.w_in, ws["z16"].copy_(ws["z"].flatten(1)), out=ws["hin16"]).view(hid, self.s, b)
            h[..., :b].copy_(x).add_(self.b_in)  # cast, then add: a mixed-dtype add allocates a float32 temporary
            if b2 != b:
                h[..., b:].copy_(h[..., :b])
        elif b2 == b:
            torch.mm(self.w_in, ws["z"].flatten(1), out=h.view(hid, -1)).view_as(h).add_(self.b_in)
        else:  # guidance: the y and ∅ halves share the input projection
            x = (self.w_in @ ws["z"].flatten(1)).view(hid, self.s, b)
            torch.add(x, self.b_in, out=h[..., :b])
            h[..., b:].copy_(h[..., :b])
        for rnn, eps, film, rws in zip(self.rnn, self.eps, ws["film"], ws["rnn"], strict=True):  # layers
            if rws is not None:
                o, eps = rnn(h, rws), eps / 4
            else:
                o = rnn(h.permute(2, 1, 0))[0].permute(2, 1, 0).contiguous()  # LSTM: batch-first module
            # LayerNorm over the H features (dim 0) as GEMMs with a row of 1/H, then FiLM, SiLU, residual.
            mean = torch.mm(ws["avg"], o.flatten(1), out=ws["mean"].flatten(1)).view_as(ws["mean"])
            r = torch.sub(o, mean, out=ws["r"])
            var = torch.mm(ws["avg"], torch.mul(r, r, out=ws["r2"]).flatten(1), out=ws["mean"].flatten(1))
            r.mul_(var.view_as(ws["mean"]).add_(eps).rsqrt_())
            torch.addcmul(film[k, hid:], r, film[k, :hid], out=r)
            h.add_(F_.silu(r, inplace=True))
        if b2 != b:
            h = torch.lerp(h[..., :b], h[..., b:], -self.w)  # (1 + w)h_y − w h_∅
        if self.gemm != torch.float32:
            ws["h16"][:-1].copy_(h.flatten(1))  # the last row stays ones
            return ws["out"].copy_(torch.mm(self.w_head, ws["h16"], out=ws["out16"]).view_as(ws["out"]))
        return torch.addmm(self.b_head, self.w_head, h.flatten(1), out=ws["out"].flatten(1)).view_as(ws["out"])

    def euler_step(self, ws: dict[str, Any], k: int) -> None:
        """Z_{k+1} from Z_k (see the class docstring), written to ws["z_next"], then swapped into ws["z"]."""
        n, nb, de, nm, k_max = self.n, self.nb, self.de, self.nm, self.k
        out = self.network(ws, k).view(self.p, -1, self.s, ws["b"])  # (p, R, S, B)
        z, z_next = (ws[key].view(self.p, self.width, self.s, ws["b"]) for key in ("z", "z_next"))
        torch.mul(z[:, :n], self.a[k], out=z_next[:, :n]).addcmul_(out[:, :n], self.b[k])
        if nb:
            p_bin = torch.sigmoid(out[:, None, n:n + nb], out=ws["p_bin"])  # (p, 1, F_2, S, B)
            shape = (self.p, de, nb, self.s, ws["b"])
            zb = torch.mul(p_bin, self.c1[k], out=z_next[:, n:n + nb * de].view(shape))  # (faster than addcmul
            zb.add_(self.c0[k]).addcmul_(z[:, n:n + nb * de].view(shape), self.rho_bin[k])  # with these broadcasts)
        if nm:  # into workspace buffers: fresh tensors here cost more than the arithmetic
            logits = out[:, n + nb:].view(self.p, nm, k_max, self.s, ws["b"])
            e = torch.clamp(logits, -60.0, 60.0, out=ws["e_multi"]).exp_().mul_(self.multi_valid)
            prob = e.div_(torch.sum(e, dim=2, keepdim=True, out=ws["e_sum"]))  # (p, F_m, K, S, B)
            e_hat = torch.mul(prob[:, :, 0, None], self.e_multi[:, 0], out=ws["e_hat"])  # (p, F_m, d_e, S, B)
            for i in range(1, k_max):  # classes
                e_hat.addcmul_(prob[:, :, i, None], self.e_multi[:, i])
            shape = (self.p, nm, de, self.s, ws["b"])
            torch.addcmul(e_hat.mul_(self.m[k]), z[:, n + nb * de:].view(shape), self.rho_multi[k],
                          out=z_next[:, n + nb * de:].view(shape))
        ws["z"], ws["z_next"] = ws["z_next"], ws["z"]

    def run(self, noise: torch.Tensor, labels: torch.Tensor, ws: dict[str, Any] | None
            ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """noise (B, T, P) ~ N(0, I) in the model's layout, labels (B',) (B' = 2B with guidance: y then ∅) →
        D_num (B, T, F_n), classes (B, T, F_c) and the workspace (reused while B stays the same)."""
        model, b = self.model, len(noise)
        if ws is None or ws["b"] != b or ws["b2"] != len(labels):
            ws = self._workspace(b, len(labels))
        ws["film"] = [f[:, labels].transpose(1, 2)[:, :, None].contiguous() for f in self.film]  # (N+1, 2H, 1, B')
        eps = noise.reshape(b, self.s, -1)[:, :, self.perm].permute(2, 1, 0)  # (Q, S, B)
        torch.mul(eps, self.z0.view(-1, self.s, 1), out=ws["z"])
        for k in range(self.steps):
            self.euler_step(ws, k)
        out = self.network(ws, self.steps).view(self.p, -1, self.s, b)  # (p, R, S, B)
        n, nb = self.n, self.nb
        z = ws["z"].view(self.p, self.width, self.s, b)
        d_num = torch.addcmul(z[:, :n] * self.final[0], out[:, :n], self.final[1])

        def batch_first(t: torch.Tensor) -> torch.Tensor:  # (p, C, S, B) → (B, T, C)
            return t.permute(3, 2, 0, 1).reshape(b, self.t, t.shape[1])

        cls = torch.zeros(b, self.t, model.dims.n_cat, dtype=torch.long, device=noise.device)
        cls[..., model.bin_idx] = batch_first((out[:, n:n + nb] > 0).long())
        if self.nm:
            logits = out[:, n + nb:].view(self.p, self.nm, self.k, self.s, b)
            cls[..., model.multi_idx] = batch_first(logits.masked_fill(~self.multi_valid, float("-inf")).argmax(2))
        return batch_first(d_num), cls, ws
