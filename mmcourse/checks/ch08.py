"""Checkers of chapter 08 (Transfusion): the attention mask, noising the image span, the
per-position loss routing, and one generation step of the image inside the transformer.

Every checker compares the candidate with `mmcourse.transfusion` on fixed inputs built so that
each classic Transfusion bug changes the result: sequences with two images and text between
and after them (the mask), losses probed by changing only the text or only the image
positions (the routing), rows with different timesteps (the noise), and a tiny random model
whose caches must survive the step unchanged (the generation step).
"""

from __future__ import annotations

import torch

from mmcourse import diffusion
from mmcourse import transfusion as tf
from mmcourse.checks._contract import call
from mmcourse.checks._core import Check, describe, exercise, gradients, leaves, seeded
from mmcourse.transformer import GPTConfig

# text ×3, image 0 ×4, text ×2, image 1 ×3, text ×2: causal across, bidirectional within
_IDS = [-1, -1, -1, 0, 0, 0, 0, -1, -1, 1, 1, 1, -1, -1]


def _pairs(mask: torch.Tensor, image_id: list[int], kind: str) -> list[tuple[int, int]]:
    """(query, key) pairs of a (L, L) mask of a given kind that the reference allows."""
    out = []
    for i, a in enumerate(image_id):
        for j, b in enumerate(image_id):
            same = a >= 0 and a == b
            if kind == "within" and same and j > i:
                out.append((i, j))
            if kind == "future" and not same and j > i:
                out.append((i, j))
    return out


# -------------------------------------------------------------- Exercise 8.1: the mask


@exercise("8.1", "the Transfusion attention mask", references=(tf.transfusion_mask,))
def check_mask(check: Check) -> None:
    """Exercise 8.1: transfusion_mask(image_id) with image_id (L,) or (B, L) long (−1 text,
    k the k-th image) → (L, L) or (B, L, L) bool, True where query i may attend to key j."""
    dev = check.device
    image_id = torch.tensor(_IDS, device=dev)
    expected = tf.transfusion_mask(image_id)
    got = call(check, image_id)
    check.that(
        isinstance(got, torch.Tensor) and got.shape == expected.shape,
        f"a sequence of {len(_IDS)} positions with two images gives a (L, L) mask",
        expected=f"shape {tuple(expected.shape)}",
        got=describe(got),
        hint="compare image_id[:, None] with image_id[None, :]; the result is (L, L)",
    )
    check.that(
        got.dtype == torch.bool,
        "the mask is bool (True = may attend)",
        expected="torch.bool",
        got=str(got.dtype),
        hint="combine comparisons with | and &; don't turn them into 0/1 floats",
    )
    got_cpu = got.cpu()
    within = _pairs(expected.cpu(), _IDS, "within")
    missing = [p for p in within if not bool(got_cpu[p])]
    check.that(
        not missing,
        "inside an image every patch sees every other patch (bidirectional within)",
        expected="True at (query, later key) pairs of the same image, e.g. (3, 6)",
        got=f"False at {missing[:4]}",
        hint="a causal mask inside an image is the classic Transfusion bug: the patches are "
        "denoised together, so an early patch must see the later ones. OR the causal mask "
        "with (image_id[i] == image_id[j]) & (image_id[i] >= 0)",
    )
    future = _pairs(expected.cpu(), _IDS, "future")
    leaks = [p for p in future if bool(got_cpu[p])]
    text_leaks = [(i, j) for i, j in leaks if _IDS[i] < 0 and _IDS[j] < 0]
    check.that(
        not text_leaks,
        "text positions stay causal (text never sees later text)",
        expected="False at (text, later text) pairs, e.g. (0, 1)",
        got=f"True at {text_leaks[:4]}",
        hint="a common cause is −1 (text) compared as if it were an image: two text positions "
        "are not 'the same image'. Require image_id[i] >= 0 for the bidirectional part",
    )
    check.that(
        not leaks,
        "causal across the sequence: no position sees a later image or later text",
        expected="False at (query, later key) pairs that are not in one image, e.g. (3, 9)",
        got=f"True at {leaks[:4]}",
        hint="bidirectional only within one image; across images and text the mask stays "
        "causal, or text would read the image it is about to describe",
    )
    check.equal(got.cpu(), expected.cpu(), "the whole mask matches the reference")
    batch = torch.tensor([_IDS, [-1] * 10 + [0] * 4], device=dev)
    check.equal(
        call(check, batch),
        tf.transfusion_mask(batch),
        "a batch (2, L) of different layouts gives (2, L, L), one mask per row",
        hint="use image_id[..., :, None] and image_id[..., None, :] so the batch dimension "
        "broadcasts",
    )


# ------------------------------------------------------- Exercise 8.3: per-position loss routing


def _loss_inputs(dev: torch.device):
    g = seeded(82)
    b, n, v, p = 2, 12, 9, 4
    is_image = torch.zeros(b, n, dtype=torch.bool)
    is_image[0, 3:7] = True  # caption → image
    is_image[1, 2:6] = True  # image → caption
    diffuse = is_image.clone()
    diffuse[1] = False  # the clean image of the captioning row is not scored
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[0, 10:] = False  # padding
    ids = torch.randint(v, (b, n), generator=g)
    logits = torch.randn(b, n, v, generator=g)
    eps_pred = torch.randn(b, n, p, generator=g)
    eps = torch.randn(b, n, p, generator=g)
    tensors = [ids, is_image, diffuse, valid, logits, eps_pred, eps]
    return [x.to(dev) for x in tensors]


def _three(
    check: Check, out: object, what: str, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """(total, ce, mse) as scalar tensors of the inputs' `dtype`, checked before any is read."""
    check.that(
        isinstance(out, tuple | list) and len(out) == 3,
        f"{what}: returns (total, ce, mse)",
        expected="a tuple of three scalar tensors",
        got=describe(out),
        hint="return total, ce, mse",
    )
    scalars = all(isinstance(x, torch.Tensor) and x.dim() == 0 for x in out)
    check.that(
        scalars and all(x.dtype == dtype for x in out),
        f"{what}: total, ce and mse are scalar tensors of the logits' dtype",
        expected=f"three 0-dimensional {dtype} tensors",
        got=", ".join(describe(x) for x in out),
        hint="compute the losses from the inputs' own tensors: a common cause of another dtype "
        "is a tensor built without dtype= (torch.tensor(0.0), torch.zeros(…)) or a .float() "
        "on the way"
        if scalars
        else "keep the losses as tensors (no .item() or float(...)): training calls "
        "total.backward(), which a Python number cannot do",
    )
    return tuple(out)


@exercise(
    "8.3",
    "per-position loss routing",
    references=(tf.transfusion_loss, tf.loss_routes, tf.routed_loss),
)
def check_loss(check: Check) -> None:
    """Exercise 8.3: transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid,
    lam) → (total, ce, mse): CE on text targets only, λ · ε-MSE on diffused patches only."""
    ids, is_image, diffuse, valid, logits, eps_pred, eps = _loss_inputs(check.device)
    args = (logits, eps_pred, ids, eps, is_image, diffuse, valid, 0.5)
    ref = tf.transfusion_loss(*args)
    total, ce, mse = _three(check, call(check, *args), "the two-row batch")
    # probe: change only the predicted noise at text positions → the MSE must not move
    bumped = eps_pred.clone()
    before = torch.zeros_like(is_image)
    before[:, :-1] = is_image[:, 1:]  # the BOI positions are left alone (see the shift check)
    bumped[~is_image & ~before] += 3.0
    _, _, mse_text = _three(
        check, call(check, logits, bumped, ids, eps, is_image, diffuse, valid, 0.5), "probe"
    )
    check.that(
        abs(float(mse_text) - float(mse)) < 1e-5,
        "the diffusion loss ignores text positions",
        expected=f"mse unchanged ({float(mse):.4f}) when ε̂ changes only at text positions",
        got=f"mse {float(mse_text):.4f}",
        hint="diffusion loss on text positions: text has no noise to predict. Average "
        "(eps_pred − eps)² only where diffuse (& is_image & valid) is True",
    )
    # probe: change only the logits that predict an image position → CE must not move
    reads_patch = is_image[:, 1:] | is_image[:, :-1]  # target or input is a patch
    bumped = logits.clone()
    bumped[:, :-1][reads_patch] += torch.linspace(-4, 4, logits.shape[-1], device=logits.device)
    _, ce_img, _ = _three(
        check, call(check, bumped, eps_pred, ids, eps, is_image, diffuse, valid, 0.5), "probe"
    )
    check.that(
        abs(float(ce_img) - float(ce)) < 1e-5,
        "the cross-entropy ignores image positions",
        expected=f"ce unchanged ({float(ce):.4f}) when only logits around patches change",
        got=f"ce {float(ce_img):.4f}",
        hint="CE on image positions: a patch has no token id to predict (its id is a "
        "placeholder). Keep targets ids[:, 1:] only where valid[:, 1:] & ~is_image[:, 1:] & "
        "~is_image[:, :-1]; set the others to -100 (ignore_index)",
    )
    check.close(
        mse,
        ref.mse,
        "mse = mean (ε̂ − ε)² over the diffused patches, at the same position",
        atol=1e-5,
        hint="no shift for the image: a patch predicts its own noise, eps_pred[:, j] vs "
        "eps[:, j]; and the clean image of an image → caption row (diffuse False) is not scored",
        sizes={"P": eps.shape[-1]},
    )
    targets = valid[:, 1:] & ~is_image[:, 1:] & ~is_image[:, :-1]
    check.close(
        ce,
        ref.ce,
        "ce = mean next-token cross-entropy over the text targets",
        atol=1e-5,
        hint="logits[:, :-1] predict ids[:, 1:]; padding (valid False) never counts",
        sizes={"the number of text targets": int(targets.sum())},
    )
    check.close(
        total,
        ref.total,
        "total = ce + λ · mse (λ = 0.5)",
        atol=1e-5,
        hint="λ multiplies the diffusion term only",
        alternatives={"λ · ce + mse: λ multiplies the diffusion term only": 0.5 * ref.ce + ref.mse},
    )
    total, ce, mse = _three(
        check, call(check, logits, eps_pred, ids, eps, is_image, diffuse, valid), "lam left out"
    )
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid)
    check.close(
        total,
        ref.total,
        f"lam left out: total = ce + λ · mse with the documented default λ = {tf.LAMBDA:g}",
        atol=1e-5,
        hint=f"keep the signature transfusion_loss(..., valid, lam={tf.LAMBDA:g})",
    )
    _check_loss_gradients(check, ids, is_image, diffuse, valid, logits, eps_pred, eps)
    doubles = [x.double() for x in (logits, eps_pred, eps)]
    out = _three(
        check,
        call(check, doubles[0], doubles[1], ids, doubles[2], is_image, diffuse, valid, 0.5),
        "float64 inputs",
        torch.float64,
    )
    ref = tf.transfusion_loss(doubles[0], doubles[1], ids, doubles[2], is_image, diffuse, valid,
                              0.5)  # fmt: skip
    dtype_hint = "compute with the inputs' own tensors; no Python floats or float32 tensors"
    for name, got_loss, ref_loss in zip(("total", "ce", "mse"), out, ref):
        check.close(
            got_loss,
            ref_loss,
            f"keeps dtype float64 and the device ({name})",
            atol=1e-9,
            hint=dtype_hint,
            dtype_hint=dtype_hint,
        )


def _check_loss_gradients(check: Check, ids, is_image, diffuse, valid, logits, eps_pred, eps):
    """total.backward() reaches the logits of text targets and the ε̂ of diffused patches."""
    mine = leaves(logits, eps_pred)
    out = _three(
        check, call(check, mine[0], mine[1], ids, eps, is_image, diffuse, valid, 0.5), "gradients"
    )
    theirs = leaves(logits, eps_pred)
    ref = tf.transfusion_loss(theirs[0], theirs[1], ids, eps, is_image, diffuse, valid, 0.5)
    got_grads, ref_grads = gradients(out[0], mine), gradients(ref.total, theirs)
    detached = (
        "the total loss must stay in the autograd graph: no .item(), .detach(), float(...) or "
        "torch.tensor(...) around the losses"
    )
    check.close(
        got_grads[0],
        ref_grads[0],
        "total.backward() reaches the logits, and only those that predict text",
        atol=1e-6,
        hint=detached
        if not out[0].requires_grad
        else "only logits[:, :-1] at text targets get a gradient (the CE term)",
    )
    check.close(
        got_grads[1],
        ref_grads[1],
        "total.backward() reaches eps_pred at the diffused patches, scaled by λ",
        atol=1e-6,
        hint=detached
        if not out[0].requires_grad
        else "only diffused, valid patches get a gradient, λ · 2 (ε̂ − ε) / (count · P)",
    )


# ------------------------------------------------------------ Exercise 8.2: noise the image span


_ALPHA_DTYPE = (
    "keep the patches' dtype: a common cause is ᾱ, float64 like the notebook's schedule, "
    "indexed by t (B,) so it keeps a dimension and turns the result float64; cast it first, "
    "alpha_bar.to(patches)"
)


def _noise_mistakes(
    patches: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, eps: torch.Tensor
) -> dict[str, torch.Tensor]:
    """x_t (B, N, P) at every position from the classic slips of q(x_t | x_0)."""

    def noised(a: torch.Tensor) -> torch.Tensor:  # a (B,) → x_t (B, N, P)
        a = a.to(patches)[:, None, None]
        return a.sqrt() * patches + (1 - a).sqrt() * eps

    a = alpha_bar.to(patches)[t][:, None, None]  # (B, 1, 1)
    return {
        "ᾱ_t x_0 + (1 − ᾱ_t) ε, the square roots missing: √ᾱ_t x_0 + √(1 − ᾱ_t) ε": a * patches
        + (1 - a) * eps,
        "row 0's t used for every row: index ᾱ by the whole t (B,), one t per row": noised(
            alpha_bar[t[:1]].expand(len(t))
        ),
        "ᾱ_{t−1} where ᾱ_t belongs: index alpha_bar[t], one step off": noised(alpha_bar[t - 1]),
    }


@exercise("8.2", "noising the image span", references=(tf.noise_image_span,))
def check_noise(check: Check) -> None:
    """Exercise 8.2: noise_image_span(patches, is_image, t, alpha_bar, eps) → x_t like
    patches: √ᾱ_t x_0 + √(1 − ᾱ_t) ε at image positions (t per row), unchanged elsewhere."""
    dev, g = check.device, seeded(83)
    b, n, p = 3, 10, 4
    patches = torch.randn(b, n, p, generator=g).to(dev)
    eps = torch.randn(b, n, p, generator=g).to(dev)
    is_image = torch.zeros(b, n, dtype=torch.bool)
    is_image[:, 3:8] = True
    is_image[2] = False  # a row without an image
    is_image = is_image.to(dev)
    t = torch.tensor([10, 700, 300], device=dev)
    alpha_bar = diffusion.linear_schedule(1000).to(dev)  # (1000,) float64, like the notebook
    expected = tf.noise_image_span(patches, is_image, t, alpha_bar, eps)
    got = call(check, patches.clone(), is_image, t, alpha_bar, eps)
    check.tensor(
        got,
        "x_t has the shape of patches",
        shape=patches.shape,
        hint="torch.where(is_image[..., None], noisy, patches)",
    )
    check.tensor(
        got, "x_t keeps the dtype of patches", dtype=patches.dtype, dtype_hint=_ALPHA_DTYPE
    )
    text = ~is_image
    check.close(
        got[text],
        patches[text],
        "text positions (and rows without an image) are left unchanged",
        atol=1e-6,
        hint="only the image span is noised; text is a token sequence, not a signal to denoise",
    )
    check.close(
        got[is_image],
        expected[is_image],
        "image positions: √ᾱ_t x_0 + √(1 − ᾱ_t) ε, with each row's own t",
        atol=1e-5,
        hint="index ᾱ by t (B,) and broadcast as (B, 1, 1); take square roots of ᾱ_t and "
        "1 − ᾱ_t; cast ᾱ to the patches' dtype and device",
        alternatives={
            what: noisy[is_image]
            for what, noisy in _noise_mistakes(patches, t, alpha_bar, eps).items()
        },
    )
    p64, e64 = patches.double(), eps.double()
    expected = tf.noise_image_span(p64, is_image, t, alpha_bar, e64)
    dtype_hint = "cast ᾱ to the patches' dtype (alpha_bar.to(patches)), not to float32"
    check.close(
        call(check, p64, is_image, t, alpha_bar, e64),
        expected,
        "keeps dtype float64 and the device",
        atol=1e-10,
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


# -------------------------------------------------------- Exercise 8.4: one generation step


def _tiny_model(dev: torch.device) -> tf.Transfusion:
    torch.manual_seed(84)
    config = GPTConfig(vocab_size=12, block_size=72, n_layer=1, n_head=2, d_model=16)
    model = tf.Transfusion(config, patch_dim=4)
    torch.nn.init.normal_(model.patch_out.weight, std=0.5)  # a non-trivial ε̂
    return model.to(dev).eval()


_STEP_DTYPE = (
    "keep x's dtype: a common cause is a value of ᾱ (float64, like the notebook's schedule) "
    "that keeps a dimension of its own, e.g. alpha_bar[t:t + 1], and so turns x float64; cast "
    "it first, alpha_bar.to(x)"
)


def _step_mistakes(
    model: tf.Transfusion,
    caches: list,
    x: torch.Tensor,
    t: int,
    t_next: int,
    alpha_bar: torch.Tensor,
    guidance: float,
) -> dict[str, torch.Tensor]:
    """x at t_next (B, 16, P) after the classic guidance slips."""
    cond, uncond = (tf.image_eps(model, cache, x, t) for cache in caches)

    def step(eps: torch.Tensor) -> torch.Tensor:
        x4, e4 = x[..., None], eps[..., None]  # ddim_step wants (B, C, H, W)
        return diffusion.ddim_step(x4, e4, t, t_next, alpha_bar, 0.0, torch.zeros_like(x4))[..., 0]

    return {
        "ε̂ = ε_caption + s (ε_caption − ε_null), which starts from the caption's ε̂: "
        "cfg_combine(eps_cond, eps_uncond, scale) = ε_null + s (ε_caption − ε_null)": step(
            cond + guidance * (cond - uncond)
        ),
        "the caption's ε̂ alone, no guidance: combine it with the null cache's ε̂, "
        "cfg_combine(eps_cond, eps_uncond, guidance)": step(cond),
    }


@exercise("8.4", "one generation step", references=(tf.generation_step,))
def check_generation_step(check: Check) -> None:
    """Exercise 8.4: generation_step(model, cond, uncond, x, t, t_next, alpha_bar, guidance)
    → x at t_next: ε̂ under the caption cache and the null cache (`image_eps`), combined by
    classifier-free guidance, one DDIM step (η = 0). The caches are left as they were."""
    dev, g = check.device, seeded(84)
    model = _tiny_model(dev)
    alpha_bar = diffusion.linear_schedule(1000).to(dev)  # (1000,) float64, like the notebook
    x = torch.randn(2, tf.N_PATCHES, 4, generator=g).to(dev)
    with torch.no_grad():
        for guidance, (t, t_next) in [(3.0, (600, 400)), (1.0, (200, -1))]:
            caches = [tf.prefix_cache(model, torch.tensor([[1, 5, 7, 3]] * 2, device=dev)),
                      tf.prefix_cache(model, torch.tensor([[1, 3]] * 2, device=dev))]  # fmt: skip
            expected = tf.generation_step(model, *caches, x, t, t_next, alpha_bar, guidance)
            lengths = [len(c) for c in caches]
            got = call(check, model, *caches, x.clone(), t, t_next, alpha_bar, guidance)
            check.that(
                [len(c) for c in caches] == lengths,
                f"the caption and null caches keep their lengths {lengths}",
                expected=f"lengths {lengths}",
                got=f"lengths {[len(c) for c in caches]}",
                hint="image_eps restores the cache; if you call the model yourself, save "
                "list(cache.layers) and put it back, or the next step sees stale patches",
            )
            what = f"one DDIM step t = {t} → {t_next} with guidance {guidance}"
            check.tensor(got, f"{what}: x at t_next has the shape of x", shape=x.shape)
            check.tensor(
                got,
                f"{what}: x at t_next keeps the dtype of x",
                dtype=x.dtype,
                dtype_hint=_STEP_DTYPE,
            )
            swapped = tf.generation_step(model, caches[1], caches[0], x, t, t_next, alpha_bar,
                                         guidance)  # fmt: skip
            if guidance != 1.0:
                check.that(
                    not torch.allclose(got, swapped, atol=1e-5),
                    f"guidance {guidance} pushes towards the caption, not away from it",
                    expected="ε̂ = ε_null + s (ε_caption − ε_null)",
                    got="ε_caption + s (ε_null − ε_caption): cond and uncond swapped",
                    hint="cfg_combine(eps_cond, eps_uncond, scale): the caption cache is cond",
                )
            check.close(
                got,
                expected,
                what,
                atol=1e-4,
                hint="eps = cfg_combine(image_eps(model, cond, x, t), image_eps(model, uncond, "
                "x, t), guidance); then ddim_step on x[..., None] with η = 0 and [..., 0]",
                alternatives=_step_mistakes(model, caches, x, t, t_next, alpha_bar, guidance),
            )
