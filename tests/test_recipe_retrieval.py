"""Chapter 12's recipe (mmcourse/recipes/retrieval.py): the held-out pairs, the memory,
retrieval-augmented documents and their loss mask, that no held-out pair is ever a training
target, that retrieval leaves each pair's own entry out, the held-out evaluations on a tiny
model, and every documented error, named."""

from __future__ import annotations

import copy

import pytest
import torch

from mmcourse import recipes
from mmcourse import train as train_cli
from mmcourse.bpe import course_bpe
from mmcourse.checks._placement import PlacementAudit, is_host
from mmcourse.data import COLORS, SHAPES, ShapesDataset, all_captions, caption_to_labels
from mmcourse.recipes import retrieval as rr
from mmcourse.recipes import unified as unified_recipe
from mmcourse.transformer import GPT
from mmcourse.vocab import Segment, course_vocab, decode_interleaved, encode_interleaved


@pytest.fixture(scope="module")
def mem() -> rr.Memory:
    return rr.memory(n=300, seed=5)


@pytest.fixture(scope="module")
def tiny() -> GPT:
    torch.manual_seed(0)
    config = unified_recipe.default_config(n_layer=1, n_head=2, d_model=32, block_size=240)
    return GPT(config).eval()


def _codes(seed: int) -> torch.Tensor:
    return torch.randint(512, (8, 8), generator=torch.Generator().manual_seed(seed))


def test_held_out_pairs_one_per_colour_each_shape_twice():
    assert sorted(c for c, _ in rr.HELD_OUT) == sorted(COLORS)
    assert all(sum(s == shape for _, s in rr.HELD_OUT) == 2 for shape in SHAPES)
    captions = rr.held_out_captions()
    assert len(captions) == 30 and set(captions) < set(all_captions())
    labels = torch.stack([caption_to_labels(c) for c in all_captions()])
    held = rr.is_held_out(labels)
    assert held.dtype == torch.bool and held.sum() == 30
    assert [c for c, h in zip(all_captions(), held.tolist()) if h] == captions
    assert "a red circle in the center" in captions
    assert "a red square in the center" not in captions


def test_memory_is_the_shapes_pairs_embedded(mem):
    n = len(mem.captions)
    assert n == 300 and mem.image_emb.shape == mem.text_emb.shape == (n, 64)
    assert mem.codes.shape == (n, 8, 8) and mem.codes.dtype == torch.long
    assert torch.allclose(mem.image_emb.norm(dim=1), torch.ones(n), atol=1e-5)
    labels = torch.stack([caption_to_labels(c) for c in mem.captions])
    assert torch.equal(labels, mem.labels)
    same = [i for i, c in enumerate(mem.captions) if c == mem.captions[0]]
    assert torch.equal(mem.text_emb[same], mem.text_emb[same[:1]].expand(len(same), -1))
    again = rr.memory(n=300, seed=5)  # from the cache: the same values
    assert torch.equal(again.image_emb, mem.image_emb) and torch.equal(again.codes, mem.codes)


def test_document_round_trips_and_scores_only_the_query():
    bpe, vocab = course_bpe(), course_vocab()
    context = [
        (_codes(1), "a red square in the top left"),
        (_codes(2), "a blue circle in the center"),
    ]
    query = "a green circle in the bottom right"
    ids, scored = rr.rag_document(context, query, _codes(3), vocab, bpe)
    assert ids.shape == scored.shape and scored.dtype == torch.bool
    segments = decode_interleaved(ids, vocab)
    assert torch.equal(encode_interleaved(segments, vocab), ids)  # lossless
    kinds = [s.kind for s in segments]
    assert kinds == ["image", "text", "image", "text", "image"]
    assert torch.equal(segments[0].tokens, _codes(1)) and torch.equal(segments[2].tokens, _codes(2))
    assert torch.equal(segments[4].tokens, _codes(3))
    # the second context caption and the query caption meet in one run of text ids
    words = torch.tensor(bpe.encode("a blue circle in the center") + bpe.encode(query))
    assert torch.equal(segments[3].tokens, words)
    # scored: exactly the query (caption, BOI, 64 image ids, EOI) and EOS
    n_query = len(bpe.encode(query)) + 66 + 1
    assert int(scored.sum()) == n_query and bool(scored[-n_query:].all())
    assert not scored[:-n_query].any()
    alone, alone_scored = rr.rag_document([], query, _codes(3), vocab, bpe)
    assert torch.equal(ids[-n_query:], alone[1:]) and alone_scored.tolist() == [False] + [True] * (
        len(alone) - 1
    )  # no context: every target counts, as in chapter 07


def test_image_caption_document_puts_the_caption_last():
    bpe, vocab = course_bpe(), course_vocab()
    query = "a green circle in the bottom right"
    ids, scored = rr.rag_document([(_codes(1), "a red square in the top left")], query,
                                  _codes(3), vocab, bpe, direction="image_caption")  # fmt: skip
    n_caption = len(bpe.encode(query))
    assert ids[-1] == vocab.EOS and ids[-2 - n_caption] == vocab.EOI
    assert torch.equal(ids[-1 - n_caption : -1], torch.tensor(bpe.encode(query)))
    # only the caption and EOS are scored: the query's image is the input
    assert int(scored.sum()) == n_caption + 1 and bool(scored[-(n_caption + 1) :].all())
    # a context caption alone (codes None): [BOS] caption [BOI] image [EOI] caption [EOS]
    ids, scored = rr.rag_document([(None, "a red square in the top left")], query, _codes(3),
                                  vocab, bpe, direction="image_caption")  # fmt: skip
    kinds = [kind for kind, _ in decode_interleaved(ids, vocab)]
    assert kinds == ["text", "image", "text"] and int(scored.sum()) == n_caption + 1
    with pytest.raises(TypeError, match="or None"):
        rr.rag_document([("codes", "a red square in the top left")], query, _codes(3))


def test_loader_mask_is_the_scored_part_and_never_padding(mem):
    docs = rr.rag_documents(rr.training_memory(mem), k=1)
    loader = rr.RAGLoader(docs, batch_size=6, seed=1)
    ids, mask = loader.next_batch()
    assert ids.shape == mask.shape and ids.shape[0] == 6 and mask.dtype == torch.bool
    vocab = course_vocab()
    assert not (mask & (ids == vocab.PAD)).any()
    by_ids = {tuple(d[0].tolist()): d[1] for d in docs}
    for row, m in zip(ids, mask):
        real = row[row != vocab.PAD]
        assert torch.equal(m[: len(real)], by_ids[tuple(real.tolist())])


def test_no_held_out_pair_among_the_training_targets(mem):
    train = rr.training_memory(mem)
    assert 0 < len(train.captions) < len(mem.captions)
    assert not rr.is_held_out(train.labels).any()
    held = set(rr.held_out_captions())
    bpe, vocab = course_bpe(), course_vocab()
    for ids, _ in rr.rag_documents(train, k=2, directions=rr.DIRECTIONS):
        text = bpe.decode(ids[ids < vocab.text_size].tolist())
        assert not any(c in text for c in held)
    for direction in rr.DIRECTIONS:
        for k in (rr.K, 0):  # both models' documents
            for ids, _ in rr.training_documents(mem, k, seed=1, direction=direction):
                text = bpe.decode(ids[ids < vocab.text_size].tolist())
                assert not any(c in text for c in held)


def test_retrieval_leaves_each_pair_out(mem):
    train = rr.training_memory(mem)
    n = len(train.captions)
    # a pair's own image is its best match: excluded, it must never come back
    contexts = rr.retrieve_context(train, train.image_emb, 3, exclude=torch.arange(n))
    for i, ctx in enumerate(contexts):
        assert len(ctx) == 3
        assert not any(torch.equal(codes, train.codes[i]) for codes, _ in ctx)
    found = rr.retrieve_context(train, train.image_emb, 1)
    assert all(torch.equal(ctx[0][0], train.codes[i]) for i, ctx in enumerate(found))
    # by the pair's own image vector: its nearest neighbour, never itself
    by_image = rr.rag_documents(train, k=1, retrieve_by="image")
    first = [ctx[0][0] for ctx in found]
    nearest = rr.retrieve_context(train, train.image_emb, 1, exclude=torch.arange(n))
    vocab = course_vocab()
    for (ids, _), ctx, own in zip(by_image, nearest, first):
        context_codes = vocab.image_codes_of(ids[2:66]).view(8, 8)
        assert torch.equal(context_codes, ctx[0][0]) and not torch.equal(context_codes, own)
    # caption → image retrieval finds an image of the same caption (the CLIP is good)
    contexts = rr.retrieve_context(train, train.text_emb, 1, exclude=torch.arange(n))
    assert sum(ctx[0][1] == c for ctx, c in zip(contexts, train.captions)) / n > 0.8


def test_recall_numbers_are_shares(mem):
    captions = rr.held_out_captions()
    scores = rr.recall(mem, captions)
    assert set(scores) == {"recall_at_1", "recall_at_4"}
    assert all(0 <= v <= 1 for v in scores.values())
    assert scores["recall_at_1"] <= scores["recall_at_4"]
    truth = rr.relevant(mem, captions)
    assert truth.shape == (30, 300) and truth.dtype == torch.bool
    none = rr.recall(rr.training_memory(mem), captions)  # held-out pairs are not there
    assert none == {"recall_at_1": 0.0, "recall_at_4": 0.0}


def test_random_context_is_seeded_and_spread(mem):
    a, b = rr.random_context(mem, 50, 2, seed=3), rr.random_context(mem, 50, 2, seed=3)
    assert [[c for _, c in ctx] for ctx in a] == [[c for _, c in ctx] for ctx in b]
    assert len({c for ctx in a for _, c in ctx}) > 20


def test_the_gate_leaves_out_exactly_the_contexts_below_it(tiny, mem):
    captions = rr.held_out_captions()[:8]
    queries = rr.embed_captions(captions)
    rows = rr._random_rows(mem, len(captions), 1, seed=4)  # what mode "random" draws
    cos = (queries * mem.image_emb[rows[:, 0]]).sum(-1)
    gate = float(cos.median())  # some in, some out
    _, ungated = rr.sample_heldout(tiny, mem, captions, "random", seed=4)
    _, gated = rr.sample_heldout(tiny, mem, captions, "random", seed=4, gate=gate)
    assert 0 < sum(map(bool, gated)) < len(captions)
    for kept, full, c in zip(gated, ungated, cos.tolist()):
        assert [cap for _, cap in kept] == ([cap for _, cap in full] if c >= gate else [])
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(kept, full))
    _, closed = rr.sample_heldout(tiny, mem, captions, "retrieved", gate=1.01)
    assert closed == [[]] * len(captions)  # nothing reaches a cosine above 1
    out = rr.evaluate_heldout(tiny, mem, "random", per_caption=1, captions=captions, seed=4,
                              gate=gate)  # fmt: skip
    assert out["context_used"] == sum(map(bool, gated)) / len(captions)


def test_fit_gate_sits_halfway_on_training_captions(mem):
    gate = rr.fit_gate(mem, samples=20, seed=1)
    assert gate == rr.fit_gate(mem, samples=20, seed=1)  # seeded
    held = set(rr.held_out_captions())
    captions = [c for c in all_captions() if c not in held]  # no held-out caption is used
    queries = rr.embed_captions(captions)
    weakest = rr.top_k(queries, mem.image_emb, 1).scores[:, 0].min()
    picks = torch.randint(300, (len(captions), 20), generator=torch.Generator().manual_seed(1))
    cos = (queries[:, None] * mem.image_emb[picks]).sum(-1)
    other = ~torch.gather(rr.relevant(mem, captions), 1, picks)
    assert gate == pytest.approx(float(weakest + cos[other].max()) / 2)
    best, mismatched = rr.gate_scores(mem, samples=20, seed=1)
    assert len(best) == 60 and torch.equal(mismatched, cos[other])  # the 60 training captions
    with pytest.raises(ValueError, match="samples"):
        rr.fit_gate(mem, samples=0)


@pytest.mark.parametrize("mode", ["retrieved", "random", "none"])
def test_evaluate_heldout_on_a_tiny_model(tiny, mem, mode):
    captions = rr.held_out_captions()[:2]
    out = rr.evaluate_heldout(tiny, mem, mode, per_caption=1, captions=captions)
    assert all(0 <= v <= 1 for v in out.values())
    assert {"judge", "color", "shape", "position"} <= set(out)
    assert ("context_right" in out) == (mode != "none")
    if mode == "retrieved":
        assert out["context_right"] == 1.0


def test_sample_heldout_returns_images_and_their_contexts(tiny, mem):
    captions = rr.held_out_captions()[:3]
    images, contexts = rr.sample_heldout(tiny, mem, captions, "retrieved", seed=2)
    assert images.shape == (3, 3, 32, 32) and [c[0][1] for c in contexts] == captions
    again, _ = rr.sample_heldout(tiny, mem, captions, "retrieved", seed=2)
    assert torch.equal(images, again)  # seeded
    _, none = rr.sample_heldout(tiny, mem, captions, "none")
    assert none == [[], [], []]
    scores = rr.judge_images(images, captions)
    assert set(scores) == {"judge", "color", "shape", "position"}
    assert all(0 <= v <= 1 for v in scores.values())


def test_train_leaves_the_model_unchanged(tiny, mem):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    docs = rr.rag_documents(rr.subset(mem, torch.arange(20)), k=1)
    result = rr.train(tiny, rr.RAGLoader(docs, batch_size=2), steps=2, progress=False,
                          device="cpu")  # fmt: skip
    assert len(result.losses) == 2 and result.model is not tiny
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in before.items())


def test_registered_with_its_four_models_and_their_commands():
    assert recipes.retrieval is rr
    assert rr.REBUILDS == {"retrieval": rr.rebuild, "retrieval_captions": rr.rebuild_captions}
    assert set(rr.WEIGHTS) == {"retrieval_rag", "retrieval_baseline", "retrieval_rag_captions",
                               "retrieval_baseline_captions"}  # fmt: skip
    for direction, target in (("caption_image", "retrieval"),
                              ("image_caption", "retrieval_captions")):  # fmt: skip
        assert target in train_cli.TARGETS
        for name in rr.PAIRS[direction]:
            model = recipes.load(name, device="cpu")  # the shipped float16 files
            assert model.config["block_size"] == rr.BLOCK_SIZE
            assert rr.WEIGHTS[name].command == f"python -m mmcourse.train {target}"
    fresh = rr.new_model(0)
    assert fresh.config == model.config and torch.equal(
        fresh.pos_emb.weight, rr.new_model(0).pos_emb.weight
    )


def test_errors_are_named(mem, tiny):
    with pytest.raises(ValueError, match="labels"):
        rr.is_held_out(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="direction"):
        rr.rag_document([], "a red square in the center", _codes(0), direction="sideways")
    with pytest.raises(TypeError, match="context must be a list"):
        rr.rag_document("a red square", "a red square in the center", _codes(0))
    with pytest.raises(TypeError, match=r"context\[0\]"):
        rr.rag_document([_codes(1)], "a red square in the center", _codes(0))
    with pytest.raises(TypeError, match="caption must be a non-empty str"):
        rr.rag_document([], "", _codes(0))
    with pytest.raises(ValueError, match="retrieve_by"):
        rr.rag_documents(mem, retrieve_by="text")
    with pytest.raises(ValueError, match="mode"):
        rr.evaluate_heldout(tiny, mem, "nearest", per_caption=1)
    with pytest.raises(ValueError, match="documents is empty"):
        rr.RAGLoader([])
    with pytest.raises(TypeError, match="loader must be a RAGLoader"):
        rr.train(tiny, [], steps=1)
    with pytest.raises(ValueError, match="k"):
        rr.random_context(mem, 3, 0)
    with pytest.raises(ValueError, match="n"):
        rr.memory(n=0)
    empty = rr.subset(mem, torch.zeros(300, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        rr.retrieve_context(empty, mem.text_emb[:2], 1)
    with pytest.raises(ValueError, match="k"):
        rr.retrieve_context(mem, mem.text_emb[:2], 301)
    with pytest.raises(ValueError):
        rr.retrieve_context(mem, torch.randn(2, 32), 1)  # the wrong embedding size
    with pytest.raises(TypeError, match="captions"):
        rr.embed_captions("a red square in the center")


def test_context_mix_shares_and_the_documents_follow_them(mem):
    modes = rr.context_modes(6000, rr.CONTEXT_MIX, seed=2)
    assert torch.equal(modes, rr.context_modes(6000, rr.CONTEXT_MIX, seed=2))  # seeded
    shares = torch.bincount(modes, minlength=3).float() / 6000
    assert torch.allclose(shares, torch.tensor([0.6, 0.2, 0.2]), atol=0.025)
    train = rr.training_memory(mem)
    n = len(train.captions)
    docs = rr.rag_documents(train, k=1, directions=rr.DIRECTIONS, retrieve_by="image",
                            mix=rr.CONTEXT_MIX, seed=3)  # fmt: skip
    assert len(docs) == 2 * n
    drawn = rr.context_modes(2 * n, rr.CONTEXT_MIX, seed=3).tolist()
    nearest = rr.retrieve_context(train, train.image_emb, 1, exclude=torch.arange(n))
    alone = [rr.rag_document([], c, x, direction=d)[0] for d in rr.DIRECTIONS
             for c, x in zip(train.captions, train.codes)]  # fmt: skip
    vocab = course_vocab()
    for i, ((ids, scored), mode, query) in enumerate(zip(docs, drawn, alone)):
        # the loss mask: caption → image, exactly the query (every id after BOS of the document
        # without context); image → caption, its caption and EOS
        written = len(query) - 1 if i < n else len(query) - 67
        assert int(scored.sum()) == written and bool(scored[-written:].all())
        assert torch.equal(ids[-(len(query) - 1) :], query[1:])
        if mode == 2:  # no context
            assert len(ids) == len(query)
            continue
        assert len(ids) > len(query) and ids[1] == vocab.BOI
        codes = vocab.image_codes_of(ids[2:66]).view(8, 8)
        if mode == 0:  # retrieved: the pair's nearest neighbour by image, never itself
            assert torch.equal(codes, nearest[i % n][0][0])
    # without a mix every document is retrieved, with k = 0 none is
    assert len(rr.rag_documents(train, k=0, mix=rr.CONTEXT_MIX)[0][0]) == len(alone[0])


def test_rebuild_plumbing_on_a_tiny_run(mem, monkeypatch, tmp_path):
    monkeypatch.setattr(rr, "MODEL_CONFIG", {"block_size": 240, "n_layer": 1, "n_head": 2,
                                             "d_model": 32})  # fmt: skip
    monkeypatch.setattr(rr, "MEMORY_SIZE", 300)
    line = rr.rebuild(5, directory=tmp_path, steps=2, per_caption=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "retrieval_baseline.pt", "retrieval_rag.pt"]  # fmt: skip
    keys = ("recall_at_1", "recall_at_4", "heldout_judge_no_retrieval", "heldout_judge_retrieval",
            "heldout_judge_random_context", "rag_gain_points")  # fmt: skip
    keys += (
        "heldout_judge_rag_no_context",
        "gate",
        "heldout_judge_retrieval_gated",
        "heldout_judge_random_context_gated",
        "gated_random_used",
        "gated_gain_points",
    )
    assert line.startswith("retrieval: ") and all(f"{k} " in line for k in keys)
    rag = rr.load_model(tmp_path / "retrieval_rag.pt", "cpu")
    assert rag.config["n_layer"] == 1 and rag.config["block_size"] == 240
    # a second run repeats the weights and the numbers bit for bit (one thread)
    first = rag.state_dict()
    again = rr.rebuild(5, directory=tmp_path, steps=2, per_caption=1)
    assert _numbers(again) == _numbers(line)
    second = rr.load_model(tmp_path / "retrieval_rag.pt", "cpu").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def _numbers(line: str) -> dict[str, str]:
    pairs = [p.rsplit(" ", 1) for p in line.removeprefix("retrieval: ").split(", ")]
    return {k: v for k, v in pairs if not k.endswith("seconds")}


def test_mix_errors_are_named(mem):
    with pytest.raises(ValueError, match="mix must map"):
        rr.context_modes(4, {"nearest": 1.0})
    with pytest.raises(ValueError, match="sum to 1"):
        rr.context_modes(4, {"retrieved": 0.6, "none": 0.2})
    with pytest.raises(ValueError, match=r"mix\['retrieved'\]"):
        rr.context_modes(4, {"retrieved": 1.5, "none": -0.5})
    with pytest.raises(ValueError, match="directions"):
        rr.rag_documents(mem, directions=("sideways",))
    with pytest.raises(TypeError, match="steps"):
        rr.experiment(steps=1.5)


# ------------------------------------------------------------------- image → caption


def test_render_captions_draws_fresh_seeded_images_of_the_captions(mem):
    captions = rr.held_out_captions()[:4] * 2
    images = rr.render_captions(captions, seed=3)
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(images, rr.render_captions(captions, seed=3))  # seeded
    assert not torch.equal(images, rr.render_captions(captions, seed=4))
    assert not torch.equal(images[0], images[4])  # the same caption, another draw
    judge = recipes.load("judge", device="cpu")
    assert judge.score(images, captions)["all"] == 1.0  # they are what they say
    with pytest.raises(TypeError, match="captions"):
        rr.render_captions("a red circle in the center")
    with pytest.raises(ValueError, match="caption"):
        rr.render_captions(["a red dog in the center"])


def test_embed_images_is_the_memory_embedding(mem):
    images = ShapesDataset(n=300, seed=5).images[:7]
    emb = rr.embed_images(images)
    assert emb.shape == (7, 64) and torch.allclose(emb, mem.image_emb[:7], atol=1e-5)
    with pytest.raises(ValueError, match="images"):
        rr.embed_images(torch.rand(2, 3, 16, 16))


def test_image_recall_finds_the_query_caption_among_the_memory_images(mem):
    captions = rr.held_out_captions()
    scores = rr.recall(mem, captions, images=rr.render_captions(captions))
    assert set(scores) == {"recall_at_1", "recall_at_4"} and scores["recall_at_4"] >= 0.9
    none = rr.recall(rr.training_memory(mem), captions, images=rr.render_captions(captions))
    assert none == {"recall_at_1": 0.0, "recall_at_4": 0.0}


def test_read_captions_counts_exact_and_attributes():
    truth = ["a red circle in the top left"] * 4
    got = ["a red circle in the top left", "a red square in the top left",
           "a blue square in the center", "red circle top left"]  # fmt: skip
    scores = rr.read_captions(got, truth)
    assert scores == {"exact": 0.25, "color": 0.5, "shape": 0.25, "position": 0.5}
    with pytest.raises(ValueError, match="as long"):
        rr.read_captions(got[:3], truth)


def test_caption_prompts_put_the_context_before_the_query_image(tiny, mem, monkeypatch):
    captions = rr.held_out_captions()[:5]
    images = rr.render_captions(captions, seed=1)
    tokenizer = recipes.load("tokenizer", device="cpu")
    codes = tokenizer.encode(images)
    seen = []

    def spy(model, prompts, allowed, stop, max_len):
        seen.extend(prompts)
        return [[] for _ in prompts]

    monkeypatch.setattr(rr, "_greedy", spy)
    _, contexts = rr.caption_heldout(tiny, mem, images, "retrieved", tokenizer=tokenizer)
    vocab, bpe = course_vocab(), course_bpe()
    assert len(seen) == 5 and all(p[0] == vocab.BOS and p[-1] == vocab.EOI for p in seen)
    for ctx, x in zip(contexts, codes):  # [BOS] ctx caption [BOI] query [EOI], as trained
        expected = encode_interleaved(
            [Segment("text", torch.tensor(bpe.encode(ctx[0][1]))), Segment("image", x)], vocab
        )[:-1]
        assert any(torch.equal(p.cpu(), expected) for p in seen)
    assert [ctx[0][1] for ctx in contexts].count(captions[0]) >= 1


@pytest.mark.parametrize("mode", ["retrieved", "random", "none"])
def test_evaluate_heldout_captions_on_a_tiny_model(tiny, mem, mode):
    out = rr.evaluate_heldout_captions(tiny, mem, mode, per_caption=1, seed=2)
    assert {"exact", "color", "shape", "position"} <= set(out)
    assert all(0 <= v <= 1 for v in out.values())
    assert ("context_used" in out) == (mode != "none")
    if mode == "retrieved":
        assert out["context_right"] >= 0.9 and out["context_used"] == 1.0
    if mode != "none":
        got, contexts = rr.caption_heldout(tiny, mem, rr.render_captions(
            rr.held_out_captions(), seed=2), mode, seed=2)  # fmt: skip
        copied = sum(g == ctx[0][1] for g, ctx in zip(got, contexts)) / 30
        assert out["context_copied"] == copied
    got, contexts = rr.caption_heldout(tiny, mem, rr.render_captions(rr.held_out_captions()[:3]),
                                       mode, seed=2)  # fmt: skip
    assert len(got) == 3 and all(isinstance(c, str) for c in got)
    assert (contexts == [[], [], []]) == (mode == "none")


def test_the_image_gate_is_set_on_training_captions_and_closes(tiny, mem):
    best, mismatched = rr.gate_scores(mem, samples=10, seed=1, query="image")
    assert len(best) == 60 * rr.GATE_RENDERS and len(mismatched) > 0
    gate = rr.fit_gate(mem, samples=10, seed=1, query="image")
    assert gate == pytest.approx(float(best.min() + mismatched.max()) / 2)
    images = rr.render_captions(rr.held_out_captions()[:4])
    _, closed = rr.caption_heldout(tiny, mem, images, "retrieved", gate=1.01)
    assert closed == [[]] * 4
    _, opened = rr.caption_heldout(tiny, mem, images, "random", gate=-1.01)
    assert all(len(ctx) == 1 for ctx in opened)
    with pytest.raises(ValueError, match="query"):
        rr.gate_scores(mem, query="audio")
    with pytest.raises(ValueError, match="images"):
        rr.caption_heldout(tiny, mem, torch.rand(2, 32, 32))


def test_rebuild_captions_plumbing_on_a_tiny_run(mem, monkeypatch, tmp_path):
    monkeypatch.setattr(rr, "MODEL_CONFIG", {"block_size": 240, "n_layer": 1, "n_head": 2,
                                             "d_model": 32})  # fmt: skip
    monkeypatch.setattr(rr, "MEMORY_SIZE", 300)
    line = rr.rebuild_captions(5, directory=tmp_path, steps=2, per_caption=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "retrieval_baseline_captions.pt", "retrieval_rag_captions.pt"]  # fmt: skip
    keys = ("image_recall_at_1", "image_recall_at_4", "heldout_caption_no_retrieval",
            "heldout_caption_retrieval", "heldout_caption_random_context", "caption_gain_points",
            "heldout_caption_rag_no_context", "caption_gate", "heldout_caption_retrieval_gated",
            "heldout_caption_random_context_gated", "caption_gated_random_used",
            "caption_gated_gain_points", "caption_random_copied", "rag_seconds",
            "baseline_seconds")  # fmt: skip
    assert line.startswith("retrieval_captions: ") and all(f"{k} " in line for k in keys)
    with pytest.raises(ValueError, match="direction"):
        rr.experiment(direction="sideways")


def test_captioning_documents_carry_captions_alone_and_drop_query_codes(mem):
    train = rr.training_memory(mem)
    n = len(train.captions)
    docs = rr.training_documents(mem, rr.K, seed=2, direction="image_caption")
    assert len(docs) == n and rr.TRAINING["image_caption"]["mix"] == rr.CAPTION_CONTEXT_MIX
    drawn = rr.context_modes(n, rr.CAPTION_CONTEXT_MIX, seed=2).tolist()
    nearest = rr.retrieve_context(train, train.image_emb, 1, exclude=torch.arange(n))
    vocab, bpe = course_vocab(), course_bpe()
    kept = []
    for (ids, _), mode, ctx, caption, codes in zip(docs, drawn, nearest, train.captions,
                                                        train.codes):  # fmt: skip
        items = decode_interleaved(ids, vocab)
        assert mode in (0, 2)  # retrieved or none: no random context
        if mode == 0:  # [BOS] retrieved caption [BOI] query [EOI] caption [EOS]
            assert [k for k, _ in items] == ["text", "image", "text"]
            assert bpe.decode(items[0][1].tolist()) == ctx[0][1]
        else:
            assert [k for k, _ in items] == ["image", "text"]
        assert bpe.decode(items[-1][1].tolist()) == caption
        kept.append(float((items[-2][1] == codes).float().mean()))
    # the share of each query's codes kept is spread from noise to clean, context or not
    kept = torch.tensor(kept)
    assert kept.min() < 0.1 and kept.max() > 0.9 and abs(float(kept.mean()) - 0.5) < 0.1
    again = rr.training_documents(mem, rr.K, seed=2, direction="image_caption")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(docs, again))  # seeded
    baseline = rr.training_documents(mem, 0, seed=2, direction="image_caption")
    for (ids, _), codes in zip(baseline, train.codes):  # the baseline's: clean, no context
        items = decode_interleaved(ids, vocab)
        assert [k for k, _ in items] == ["image", "text"] and torch.equal(items[0][1], codes)
    with pytest.raises(ValueError, match="direction"):
        rr.training_documents(mem, 1, direction="sideways")


def test_evaluate_heldout_captions_counts_right_used_and_copied(mem, tiny, monkeypatch):
    truth = rr.held_out_captions()
    other = "a red square in the center"
    # 30 queries: 10 with the right context copied, 10 with a wrong context copied, 10 without
    contexts = [[(None, c)] for c in truth[:10]] + [[(None, other)]] * 10 + [[]] * 10
    got = truth[:10] + [other] * 10 + truth[20:]
    monkeypatch.setattr(rr, "caption_heldout", lambda *a, **kw: (got, contexts))
    out = rr.evaluate_heldout_captions(tiny, mem, "retrieved", per_caption=1)
    assert out["exact"] == pytest.approx(20 / 30)
    assert out["context_right"] == pytest.approx(10 / 30)
    assert out["context_used"] == pytest.approx(20 / 30)
    assert out["context_copied"] == pytest.approx(20 / 30)


def test_the_model_paths_keep_every_tensor_on_the_models_device(tiny, mem, device):
    """What the notebook runs with a model on the course device, under the GPU's rule (the
    placement audit): the memory stays on the host by design (`.cpu()` marks it so), so every
    prompt, context and rendered image must be sent to the model's device, as on a GPU."""
    model = copy.deepcopy(tiny).to(device)  # the shared fixture stays where it is
    captions = rr.held_out_captions()[:2]
    with PlacementAudit():
        host = rr.Memory(*(x.cpu() if isinstance(x, torch.Tensor) else x for x in mem))
        assert is_host(host.codes) and is_host(host.image_emb)
        docs = rr.rag_documents(rr.subset(host, torch.arange(8)), k=1)
        rr.train(model, rr.RAGLoader(docs, batch_size=2), steps=1, progress=False, device=device)
        for mode in ("retrieved", "random", "none"):
            rr.evaluate_heldout(model, host, mode, per_caption=1, captions=captions, gate=0.5)
            rr.evaluate_heldout_captions(model, host, mode, per_caption=1, gate=0.5)
        images, _ = rr.sample_heldout(model, host, captions, "retrieved", seed=2)
        rr.judge_images(images, captions)
        rr.caption_heldout(model, host, rr.render_captions(captions), "retrieved")
