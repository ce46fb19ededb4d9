"""Checkers of chapter 03 (ViT patches and fusion): patchify, unpatchify, the patch embedding as
a convolution, the 2-D sin-cos positional embedding, the contrastive loss and the projector.

Every checker compares the candidate with `mmcourse.patches` / `mmcourse.fusion` on seeded inputs.
When a wrong result equals a known wrong version (channels first inside each patch, a transposed
patch grid, a one-directional loss...), the failure names that mistake on its "looks like" line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from mmcourse import fusion, patches
from mmcourse.checks._contract import call
from mmcourse.checks._core import Check, OpSpy, exercise, gradients, leaves, seeded

_ORDER = "x (B, C, H, W) → (B, N, P·P·C) with rearrange 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'"


# ------------------------------------------------------------------------------- helpers


def _counting(b: int, c: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """An image whose every value is different (its index), so any misplaced value shows."""
    return torch.arange(b * c * h * w, dtype=torch.float32, device=device).view(b, c, h, w)


def _patch_mistakes(x: torch.Tensor, p: int) -> dict[str, torch.Tensor]:
    """The wrong patch layouts learners produce, by what each one is."""
    b = len(x)
    unfolded = F.unfold(x, kernel_size=p, stride=p)  # (B, C·P·P, N)
    return {
        "the (c p1 p2) order, channels first inside each patch, which F.unfold gives; the "
        "course's order is (p1 p2 c), channels last: move the channel axis after the pixels "
        f"({_ORDER})": unfolded.transpose(1, 2),
        "F.unfold's (B, C·P·P, N) reshaped: reshape does not move axes, it only regroups the "
        f"values in memory order; move the axes instead ({_ORDER})": unfolded.reshape(
            b, unfolded.shape[2], -1
        ),
        "the patch grid transposed: patches go row by row, (h w), so patch n sits at row "
        "n // (W/P), column n % (W/P)": rearrange(
            x, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=p, p2=p
        ),
        "each patch transposed: inside a patch, pixel (i, j) comes at (i·P + j)·C, rows "
        "first": rearrange(x, "b c (h p1) (w p2) -> b (h w) (p2 p1 c)", p1=p, p2=p),
        "a plain reshape of x, which cuts the memory into runs of P·P·C values that are not "
        f"P×P squares; split H and W into (h p1) and (w p2) first ({_ORDER})": x.reshape(
            b, -1, p * p * x.shape[1]
        ),
    }


# ------------------------------------------------------------------ Exercise 3.1: patchify


@exercise("3.1", "patchify", references=(patches.patchify,))
def check_patchify(check: Check) -> None:
    """Exercise 3.1: patchify(x (B, C, H, W), patch_size) -> (B, N, P·P·C), channels last."""
    dev = check.device
    x = _counting(2, 3, 8, 12, dev)
    got = call(check, x, 4)
    check.tensor(
        got,
        "the shape for x (2, 3, 8, 12) and patch_size 4",
        shape=(2, 6, 48),
        hint="N = (H/P)·(W/P) = 6 patches, each flattened to P·P·C = 48 values",
    )
    for c, what in ((1, "a 1-channel image"), (3, "a 3-channel image")):
        x = _counting(2, c, 4, 6, dev)
        got = call(check, x, 2)
        check.close(
            got,
            patches.patchify(x, 2),
            f"every value in its place for {what} of 4×6, patch_size 2",
            atol=0,
            rtol=0,
            hint=_ORDER,
            alternatives=_patch_mistakes(x, 2),
        )
    x = torch.randn(3, 2, 6, 6, generator=seeded(31), dtype=torch.float64).to(dev)
    check.close(call(check, x, 3), patches.patchify(x, 3), "keeps dtype float64 and the device")
    for h, w in [(6, 8), (8, 6)]:
        check.raises(
            ValueError,
            f"raises ValueError for a {h}×{w} image and patch_size 4 ({max(h, w)} divides, "
            f"{min(h, w)} does not)",
            _counting(1, 3, h, w, dev),
            4,
            hint="check H % P and W % P first (both): F.unfold and a strided Conv2d silently "
            "drop the leftover border",
        )


# ---------------------------------------------------------------- Exercise 3.2: unpatchify


@exercise("3.2", "unpatchify", references=(patches.unpatchify,))
def check_unpatchify(check: Check) -> None:
    """Exercise 3.2: unpatchify(patches (B, N, P·P·C), patch_size, height, width)
    -> (B, C, H, W), the inverse of patchify."""
    dev = check.device
    for c in (1, 3):
        x = _counting(2, c, 4, 6, dev)
        tokens = patches.patchify(x, 2)  # (2, 6, 4·c)
        got = call(check, tokens, 2, 4, 6)
        mistakes = {
            "the patch grid transposed: patch n belongs at row n // (W/P), column n % (W/P), "
            "so split N as (h w), not (w h)": rearrange(
                tokens, "b (w h) (p1 p2 c) -> b c (h p1) (w p2)", h=2, p1=2, p2=2
            ),
            "the values inside each patch read as (c p1 p2), which scrambles the colours: they "
            "are (p1 p2 c), channels last": rearrange(
                tokens, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=2, p1=2, p2=2
            ),
            "a plain reshape, which does not undo patchify; rearrange "
            "'b (h w) (p1 p2 c) -> b c (h p1) (w p2)'": tokens.reshape(x.shape),
        }
        check.close(
            got,
            x,
            f"unpatchify(patchify(x)) == x for a {c}-channel 4×6 image, patch_size 2",
            atol=0,
            rtol=0,
            hint="undo patchify's 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' with the reverse "
            "pattern, giving h = H/P and p1 = p2 = P",
            alternatives=mistakes,
        )
    x = torch.randn(2, 3, 8, 4, generator=seeded(32), dtype=torch.float64).to(dev)
    check.close(
        call(check, patches.patchify(x, 4), 4, 8, 4),
        x,
        "inverts patchify on a tall 8×4 image with patch_size 4, dtype float64 kept",
        atol=0,
        rtol=0,
    )
    for n in (5, 3):
        check.raises(
            ValueError,
            f"raises ValueError for {n} patches and an 8×8 image with patch_size 4 (which has 4)",
            torch.zeros(1, n, 48, device=dev),  # (B, N, P·P·C) with C = 3
            4,
            8,
            8,
            hint="compare patches.shape[1] with (height // P)·(width // P) and raise ValueError "
            "when they differ, in either direction",
        )


# ----------------------------------------------------- Exercise 3.3: the patch embedding as a conv


@exercise(
    "3.3",
    "the patch embedding as a convolution",
    references=(patches.PatchEmbed, patches.linear_weight_to_conv),
)
def check_conv_patch_embed(check: Check) -> None:
    """Exercise 3.3: conv_patch_embed(x (B, C, H, W), weight (D, P·P·C), bias (D,), patch_size)
    -> (B, N, D), one F.conv2d equal to patchify(x) @ weight.T + bias."""
    g, dev = seeded(33), check.device
    for b, c, h, w, d, p in [(2, 3, 8, 8, 5, 4), (1, 3, 6, 4, 7, 2)]:
        x = torch.randn(b, c, h, w, generator=g).to(dev)
        weight = torch.randn(d, p * p * c, generator=g).to(dev)
        bias = torch.randn(d, generator=g).to(dev)
        got = call(check, x, weight, bias, p)
        expected = patches.patchify(x, p) @ weight.T + bias  # (B, N, D)
        conv = F.conv2d(x, weight.reshape(d, c, p, p), bias, stride=p)  # not permuted
        wrong_order = rearrange(weight, "d (p1 p2 c) -> d c p2 p1", p1=p, p2=p)
        right = patches.linear_weight_to_conv(weight, p)
        mistakes = {
            "the weight reshaped straight to (D, C, P, P): its columns are in (p1 p2 c) order, "
            "so reshape to (D, P, P, C), then permute to (D, C, P, P)": (
                conv.flatten(2).transpose(1, 2)
            ),
            "the kernel transposed: permute (D, P1, P2, C) to (D, C, P1, P2), keeping P1 (rows) "
            "before P2 (columns)": F.conv2d(x, wrong_order, bias, stride=p)
            .flatten(2)
            .transpose(1, 2),
            "Conv2d's (B, D, H/P, W/P) flattened with D still first: move D last, "
            "flatten(2).transpose(1, 2) gives (B, N, D)": F.conv2d(
                x, right, bias, stride=p
            ).flatten(2),
        }
        check.close(
            got,
            expected,
            f"equals the Linear form patchify(x) @ weight.T + bias for x {(b, c, h, w)}, "
            f"D={d}, P={p}",
            atol=1e-5,
            hint="weight (D, P·P·C) → (D, P, P, C) → (D, C, P, P); F.conv2d(x, w, bias, "
            "stride=P) → (B, D, H/P, W/P) → flatten(2).transpose(1, 2)",
            alternatives=mistakes,
        )
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64).to(dev)
    weight = torch.randn(6, 48, generator=g, dtype=torch.float64).to(dev)
    bias = torch.randn(6, generator=g, dtype=torch.float64).to(dev)
    with OpSpy() as spy:
        got = call(check, x, weight, bias, 4)
    check.close(
        got,
        patches.patchify(x, 4) @ weight.T + bias,
        "equals the Linear form to 1e-6 or better in float64",
        atol=1e-10,
        rtol=1e-10,
    )
    check.that(
        "convolution" in spy.names,
        "computes the embedding with a convolution",
        expected="a call of F.conv2d (or nn.Conv2d) with kernel = stride = P",
        got=f"no convolution among the operations ({', '.join(sorted(spy.names)[:8])})",
        hint="the point of the exercise is the Conv2d form: F.conv2d(x, w, bias, stride=P)",
    )
    for h, w in [(6, 8), (8, 6)]:
        check.raises(
            ValueError,
            f"raises ValueError for a {h}×{w} image and patch_size 4",
            torch.randn(1, 3, h, w, generator=g).to(dev),
            torch.randn(4, 48, generator=g).to(dev),
            torch.zeros(4, device=dev),
            4,
            hint="a strided Conv2d silently drops the leftover rows or columns; check H % P "
            "and W % P first (both)",
        )


# ------------------------------------------------------- Exercise 3.4: 2-D sin-cos embedding


def _sincos_mistakes(h: int, w: int, dim: int) -> dict[str, torch.Tensor]:
    ref = patches.sincos_2d(h, w, dim)
    half, f = dim // 2, dim // 4
    rows = torch.arange(h * w) // w
    cols = torch.arange(h * w) % w

    def encode(pos: torch.Tensor, omega: torch.Tensor, interleave: bool = False) -> torch.Tensor:
        angle = pos[:, None].double() * omega
        out = (
            torch.stack([angle.sin(), angle.cos()], dim=2).flatten(1)
            if interleave
            else (torch.cat([angle.sin(), angle.cos()], dim=1))
        )
        return out.float()

    omega = 10_000.0 ** (-torch.arange(f, dtype=torch.float64) / f)
    per_dim = 10_000.0 ** (-2 * torch.arange(f, dtype=torch.float64) / dim)
    return {
        "height and width swapped: the first dim/2 channels encode the row y (patch n is at "
        "row n // W), the last dim/2 the column x": torch.cat([ref[:, half:], ref[:, :half]], 1),
        "frequencies base^(−k/(dim/2)): each coordinate has F = dim/4 frequencies "
        "ω_k = base^(−k/F), k = 0..F−1 (divide k by dim/4, not by dim/2)": torch.cat(
            [encode(rows, per_dim), encode(cols, per_dim)], dim=1
        ),
        "sin and cos interleaved: put all F sines first, then all F cosines, for each "
        "coordinate": torch.cat([encode(rows, omega, True), encode(cols, omega, True)], dim=1),
    }


@exercise("3.4", "2-D sin-cos positional embedding", references=(patches.sincos_2d,))
def check_sincos_2d(check: Check) -> None:
    """Exercise 3.4: sincos_2d(height, width, dim, base=10000.0) -> (H·W, dim) float32."""
    for h, w, dim in [(4, 4, 8), (3, 5, 16)]:
        got = call(check, h, w, dim)
        check.close(
            got,
            patches.sincos_2d(h, w, dim),
            f"the embedding of a {h}×{w} grid with dim={dim}",
            atol=1e-5,
            hint="row n is patch n = y·W + x; channels [sin(y·ω), cos(y·ω), sin(x·ω), "
            "cos(x·ω)] with ω_k = base^(−k/F), F = dim/4",
            dtype_hint="the embedding is float32, as documented: there is no input tensor whose "
            "dtype it could keep, so compute in any precision and return .float()",
            alternatives=_sincos_mistakes(h, w, dim),
        )
    got = call(check, 2, 3, 8, base=100.0)
    check.close(
        got,
        patches.sincos_2d(2, 3, 8, base=100.0),
        "uses the base argument: base=100 for a 2×3 grid with dim=8",
        atol=1e-5,
        hint="ω_k = base^(−k/F): use the base argument, not a fixed 10000",
    )
    check.raises(
        ValueError,
        "raises ValueError for dim=6 (not a multiple of 4)",
        2,
        2,
        6,
        hint="dim/2 channels per coordinate, half sin and half cos: dim % 4 must be 0",
    )


# -------------------------------------------------------------- Exercise 3.5: contrastive loss


def _loss_mistakes(
    image_emb: torch.Tensor, text_emb: torch.Tensor, tau: float
) -> dict[str, torch.Tensor]:
    i, t = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    logits = i @ t.T / tau
    labels = torch.arange(len(logits), device=logits.device)
    image_to_text, text_to_image = (
        F.cross_entropy(logits, labels),
        F.cross_entropy(logits.T, labels),
    )
    raw = image_emb @ text_emb.T / tau
    plain = i @ t.T
    return {
        "only image→text: average it with text→image, CE(logitsᵀ, arange N)": image_to_text,
        "only text→image: average it with image→text, CE(logits, arange N)": text_to_image,
        "the two directions summed: the symmetric loss is their average, ½ (… + …)": (
            image_to_text + text_to_image
        ),
        "no temperature: divide the cosine similarities by τ before the softmax": (
            F.cross_entropy(plain, labels) + F.cross_entropy(plain.T, labels)
        )
        / 2,
        "the similarities multiplied by τ: logits = similarity / τ (τ = 0.07 sharpens them)": (
            F.cross_entropy(plain * tau, labels) + F.cross_entropy(plain.T * tau, labels)
        )
        / 2,
        "embeddings that are not normalised: use cosine similarity, F.normalize(…, dim=-1) on "
        "both before the dot products": (
            F.cross_entropy(raw, labels) + F.cross_entropy(raw.T, labels)
        )
        / 2,
        "every target 0: pair i matches pair i, so the labels are torch.arange(N)": (
            F.cross_entropy(logits, 0 * labels) + F.cross_entropy(logits.T, 0 * labels)
        )
        / 2,
    }


@exercise("3.5", "symmetric contrastive loss", references=(fusion.contrastive_loss,))
def check_contrastive_loss(check: Check) -> None:
    """Exercise 3.5: contrastive_loss(image_emb (N, D), text_emb (N, D), temperature) -> scalar."""
    g, dev = seeded(35), check.device
    for n, d, tau in [(5, 8, 0.07), (7, 3, 0.5), (4, 6, 1.0)]:
        image_emb = (3 * torch.randn(n, d, generator=g)).to(dev)
        text_emb = (0.5 * torch.randn(n, d, generator=g)).to(dev)
        got = call(check, image_emb, text_emb, tau)
        check.close(
            got,
            fusion.contrastive_loss(image_emb, text_emb, tau),
            f"the loss of N={n} pairs of D={d} embeddings at temperature τ={tau}",
            atol=1e-5,
            hint="logits = norm(I)·norm(T)ᵀ / τ; loss = ½ [CE(logits, arange N) + "
            "CE(logitsᵀ, arange N)], a scalar",
            alternatives=_loss_mistakes(image_emb, text_emb, tau),
        )
    image_emb = torch.randn(6, 4, generator=g).to(dev)
    text_emb = torch.randn(6, 4, generator=g).to(dev)
    got_leaves = leaves(image_emb, text_emb, torch.tensor(0.1, device=dev))
    ref_leaves = leaves(image_emb, text_emb, torch.tensor(0.1, device=dev))
    got_grads = gradients(call(check, *got_leaves), got_leaves)
    ref_grads = gradients(fusion.contrastive_loss(*ref_leaves), ref_leaves)
    for name, got_grad, ref_grad in zip(("image_emb", "text_emb", "temperature"), got_grads,
                                        ref_grads):  # fmt: skip
        check.close(
            got_grad,
            ref_grad,
            f"the gradient reaches {name} (a learnable temperature tensor included)",
            atol=1e-5,
            hint="compute everything with torch operations on the inputs; no .detach(), "
            ".item() or new tensors in between",
        )
    same = torch.eye(4, 8, dtype=torch.float64, device=dev)  # four orthogonal pairs, matched
    got = call(check, same, 2 * same, 0.01)
    check.close(
        got,
        fusion.contrastive_loss(same, 2 * same, 0.01),
        "nearly 0 for perfectly matched orthogonal pairs at τ=0.01, dtype float64 kept",
        atol=1e-9,
    )
    check.raises(
        ValueError,
        "raises ValueError for 4 image embeddings and 5 text embeddings",
        torch.randn(4, 8, generator=g).to(dev),
        torch.randn(5, 8, generator=g).to(dev),
        0.07,
        hint="the rows are pairs: compare image_emb.shape with text_emb.shape first",
    )


# -------------------------------------------------------------- Exercise 3.6: the projector


@exercise("3.6", "the vision-language projector", references=(fusion.project,))
def check_project(check: Check) -> None:
    """Exercise 3.6: project(vision_tokens (B, 1 + N, D_v), w1 (H, D_v), b1 (H,), w2 (D_t, H),
    b2 (D_t,)) -> (B, N, D_t): GELU MLP on the patch tokens, [CLS] dropped."""
    g, dev = seeded(36), check.device
    b, n, d_v, hidden, d_t = 2, 4, 6, 10, 5
    tokens = torch.randn(b, 1 + n, d_v, generator=g).to(dev)
    weights = [
        torch.randn(hidden, d_v, generator=g).to(dev),
        torch.randn(hidden, generator=g).to(dev),
        torch.randn(d_t, hidden, generator=g).to(dev),
        torch.randn(d_t, generator=g).to(dev),
    ]
    w1, b1, w2, b2 = weights
    got = call(check, tokens, *weights)
    expected = fusion.project(tokens, *weights)
    check.tensor(
        got,
        f"one text-space token per patch for {1 + n} vision tokens ([CLS] + {n} patches) of "
        f"D_v={d_v}, D_t={d_t}",
        shape=(b, n, d_t),
        hint="a common cause is [CLS] kept: drop it first, vision_tokens[:, 1:], as the "
        "decoder reads the image through its patches",
    )
    patches_only = tokens[:, 1:]
    mistakes = {
        "no activation between the two layers: two Linear layers in a row are one Linear "
        "layer; put F.gelu between them": F.linear(F.linear(patches_only, w1, b1), w2, b2),
        "ReLU instead of GELU: LLaVA-1.5's projector uses F.gelu": F.linear(
            F.relu(F.linear(patches_only, w1, b1)), w2, b2
        ),
        "the last token dropped instead of [CLS], which is token 0: vision_tokens[:, 1:]": (
            F.linear(F.gelu(F.linear(tokens[:, :-1], w1, b1)), w2, b2)
        ),
    }
    check.close(
        got,
        expected,
        "GELU(patches · w1ᵀ + b1) · w2ᵀ + b2",
        atol=1e-5,
        hint="F.linear(F.gelu(F.linear(patches, w1, b1)), w2, b2)",
        alternatives=mistakes,
    )
    mine = leaves(tokens, w1, w2)
    got_grads = gradients(call(check, mine[0], mine[1], b1, mine[2], b2), mine)
    ref_leaves = leaves(tokens, w1, w2)
    ref_grads = gradients(fusion.project(ref_leaves[0], ref_leaves[1], b1, ref_leaves[2], b2),
                       ref_leaves)  # fmt: skip
    check.close(
        got_grads[0],
        ref_grads[0],
        "the gradient reaches every patch token and not [CLS]",
        atol=1e-5,
        hint="compute with torch operations only; [CLS] must not enter the projector",
    )
    check.close(
        got_grads[1], ref_grads[1], "the gradient reaches w1 (the projector is trained)", atol=1e-4
    )
    check.close(got_grads[2], ref_grads[2], "the gradient reaches w2", atol=1e-4)
    one = call(check, tokens[:1], *weights)
    check.close(one, expected[:1], "one image at a time gives the same tokens", atol=1e-5)
    tokens64 = tokens.double()
    weights64 = [w.double() for w in weights]
    check.close(
        call(check, tokens64, *weights64),
        fusion.project(tokens64, *weights64),
        "keeps dtype float64 and the device",
        atol=1e-9,
    )
