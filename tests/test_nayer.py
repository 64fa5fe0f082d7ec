"""NAYER (--method nayer): noisy layers, the generator's life, the adversarial mask, the label
embeddings (hash, files, a tiny CLIP) and a run stopped mid-epoch that resumes to the same end."""
import json
import math
import os
import pickle
import signal
import string
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import datafree.synthesis.nayer as nayer_module
import datafree_kd
import registry
from conftest import ROOT
from datafree.checkpoint import load_checkpoint
from datafree.errors import UsageError
from datafree.label_embedding import (hash_embeddings, label_embeddings, main as export_main, prompt,
                                      read_embedding_file, write_embedding)
from datafree.synthesis import SYNTHESIZERS
from datafree.synthesis.nayer import NoisyLayers, balanced_targets
from test_baselines import strict_config

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import kill_soak  # noqa: E402

NAYER_CHECKOUT = "/work/ext/NAYER"


def nayer(**overrides):
    torch.manual_seed(0)
    teacher, student = registry.get_model("resnet8", 10).eval(), registry.get_model("resnet8", 10)
    values = dict(g_steps=1, synthesis_batch_size=12, batch_size=8, warmup=0, g_loops=1, gwp_loops=1, g_life=10)
    values.update(overrides)
    return SYNTHESIZERS["nayer"](teacher, student, strict_config("nayer", **values), torch.device("cpu"))


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_group_of_samples_has_its_own_noisy_layer():
    layers = NoisyLayers(groups=3, group_size=2, in_dim=4, out_dim=3)
    x = torch.randn(5, 4)
    expected = torch.cat([F.linear(x[0:2], layers.weight[0], layers.bias[0]),
                          F.linear(x[2:4], layers.weight[1], layers.bias[1]),
                          F.linear(x[4:5], layers.weight[2], layers.bias[2])])
    assert torch.allclose(layers(x), expected, atol=1e-6)
    assert torch.allclose(layers(x[:4]), expected[:4], atol=1e-6)            # whole groups only
    assert torch.allclose(layers(x[:1]), expected[:1], atol=1e-6)            # less than one group
    targets = balanced_targets(25, 10, "cpu")
    assert targets[:20].tolist() == list(range(10)) * 2 and len(set(targets[20:].tolist())) == 5


def test_noisy_layers_are_redrawn_every_round_and_the_generator_body_kept(monkeypatch):
    synth = nayer(g_loops=3)                     # three rounds of epoch 0; its first builds the generator
    assert synth.noisy_layers.weight.shape == (2, 32, 512)   # ceil(12 / 10) groups: 512 -> le_emb_size 32
    starts, real_redraw = [], NoisyLayers.redraw

    def redraw(layers):
        real_redraw(layers)
        starts.append((layers.weight.detach().clone(), layers.bias.detach().clone(), state(synth.generator)))

    monkeypatch.setattr(NoisyLayers, "redraw", redraw)
    ends = []
    for _ in range(3):
        synth.synthesize()
        ends.append((synth.noisy_layers.weight.detach().clone(), state(synth.generator)))
    for i, (weight, bias, generator) in enumerate(starts):
        assert torch.count_nonzero(bias) == 0
        assert abs(weight.mean().item()) < 0.05 and weight.std().item() == pytest.approx(1.0, abs=0.05)   # N(0, 1)
        assert not torch.equal(weight, ends[i][0])            # trained within its round
        if i > 0:
            assert not torch.equal(weight, starts[i - 1][0]) and not torch.equal(weight, ends[i - 1][0])
            assert same(generator, ends[i - 1][1])             # the body goes on from the round before


def test_the_generator_lives_g_life_epochs_and_is_rebuilt_when_kd_starts(monkeypatch):
    c = nayer(warmup=20, gwp_loops=10, g_loops=2, g_life=10)   # NAYER's CIFAR recipe
    assert [c.position(k) for k in (0, 9, 10, 199, 200, 201, 202)] == \
        [(0, 0), (0, 9), (1, 0), (19, 9), (20, 0), (20, 1), (21, 0)]
    assert [e for e in range(45) if c.generator_expires(e)] == [0, 10, 20, 30, 40]
    c = nayer(warmup=5, g_life=10)
    assert [e for e in range(30) if c.generator_expires(e)] == [0, 5, 10, 15, 20, 25]
    assert c.epoch_plan(4) == [(1, 2), (0, 2)] and nayer(warmup=1, gwp_loops=3, g_loops=2).epoch_plan(0) == \
        [(3, 2), (0, 2)]

    synth = nayer(g_life=3)      # one round per epoch: rebuilt at epochs 0 and 3, kept at 1, 2 and 4
    starts, real_redraw = [], NoisyLayers.redraw
    monkeypatch.setattr(NoisyLayers, "redraw",
                        lambda layers: (real_redraw(layers), starts.append(state(synth.generator))))
    ends = []
    for _ in range(5):
        synth.synthesize()
        ends.append(state(synth.generator))
    for epoch in (1, 2, 4):
        assert same(starts[epoch], ends[epoch - 1]), epoch
    assert starts[0]["label_norm.num_batches_tracked"] == starts[3]["label_norm.num_batches_tracked"] == 0
    assert not same(starts[3], ends[2]) and not same(starts[3], starts[0])     # a new generator, drawn afresh
    assert torch.equal(starts[3]["label_embedding"], ends[2]["label_embedding"])   # its input stays


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits + 0 * x.mean()


def test_the_adversarial_term_counts_only_samples_where_student_and_teacher_agree():
    synth = nayer(warmup=1, adv=1.0, bn=0.0, oh=0.0)
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    student = torch.tensor([[1.0, 0.0, 0.5], [2.0, 0.0, 0.0]])   # agrees on sample 0 (class 0), not on 1
    synth.teacher, synth.student, synth.hooks = FixedLogits(teacher), FixedLogits(student), []
    images, targets = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])

    p = [math.exp(v) for v in (2.0, 0.0, 0.0)]
    p = [v / sum(p) for v in p]
    q = [math.exp(v) for v in (1.0, 0.0, 0.5)]
    q = [v / sum(q) for v in q]
    kl_agreeing = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    synth.epoch = 1
    _, terms = synth.inversion_loss(images, targets)
    assert terms["adv"].item() == pytest.approx(-kl_agreeing / 2, rel=1e-5)   # sample 1 adds nothing
    synth.student = FixedLogits(torch.tensor([[1.0, 0.0, 0.5], [9.0, -5.0, 4.0]]))   # still disagreeing
    assert synth.inversion_loss(images, targets)[1]["adv"].item() == pytest.approx(-kl_agreeing / 2, rel=1e-5)
    synth.epoch = 0                                               # a warm-up epoch: no adversarial term
    assert "adv" not in synth.inversion_loss(images, targets)[1]


def test_the_hash_embedding_is_fixed_by_the_names_and_refuses_nothing():
    names = ["cat", "dog", "cat"]
    first = hash_embeddings(3, names)
    assert first.shape == (3, 512) and first.dtype == torch.float32 and torch.equal(first, hash_embeddings(3, names))
    # the same numbers on every machine (SHAKE-256 and Box-Muller only)
    assert first[0, :4].tolist() == pytest.approx([0.102834, 0.739746, -1.603113, 1.472805], abs=1e-5)
    assert not torch.equal(first[0], first[2])           # one name twice: the label index tells them apart
    assert abs(first.mean().item()) < 0.1 and first.std().item() == pytest.approx(1.0, abs=0.1)
    assert hash_embeddings(2)[1, :3].tolist() == pytest.approx([0.370371, 1.839581, 0.635424], abs=1e-5)
    assert torch.equal(label_embeddings("hash", 3, names), first)


def test_embedding_files_of_every_kind_and_their_refusals(tmp_path):
    embedding = torch.randn(4, 6)
    for suffix in (".pickle", ".pt", ".npy"):
        path = str(tmp_path / f"emb{suffix}")
        write_embedding(embedding, path)
        assert torch.equal(label_embeddings(path, 4), embedding)
    # NAYER's own files: a pickled float16 tensor that requires grad
    with open(tmp_path / "nayer_like.pickle", "wb") as f:
        pickle.dump(embedding.half().requires_grad_(), f)
    read = label_embeddings(str(tmp_path / "nayer_like.pickle"), 4)
    assert read.dtype == torch.float32 and not read.requires_grad and torch.allclose(read, embedding, atol=1e-2)
    np.save(tmp_path / "ints.npy", np.arange(8).reshape(4, 2))
    assert label_embeddings(str(tmp_path / "ints.npy"), 4).dtype == torch.float32

    with pytest.raises(UsageError, match=r"shape \(4, 6\), but the data has 5 classes: give one row per class"):
        label_embeddings(str(tmp_path / "emb.pt"), 5)
    torch.save(torch.randn(4), tmp_path / "flat.pt")
    with pytest.raises(UsageError, match=r"shape \(4,\)"):
        label_embeddings(str(tmp_path / "flat.pt"), 4)
    torch.save({"emb": embedding}, tmp_path / "dict.pt")
    with pytest.raises(UsageError, match="holds a dict, not a"):
        label_embeddings(str(tmp_path / "dict.pt"), 4)
    with pytest.raises(UsageError, match="no such file"):
        label_embeddings(str(tmp_path / "missing.pt"), 4)
    with pytest.raises(UsageError, match="unknown file type '.txt'"):
        (tmp_path / "emb.txt").write_text("1 2")
        label_embeddings(str(tmp_path / "emb.txt"), 4)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['NAYER_TEST_MARK']}",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    mark = tmp_path / "ran"
    monkeypatch.setenv("NAYER_TEST_MARK", str(mark))
    with open(tmp_path / "evil.pickle", "wb") as f:
        pickle.dump(RunsCode(), f)
    with pytest.raises(UsageError, match="holds no plain tensor or array"):
        read_embedding_file(str(tmp_path / "evil.pickle"))
    assert not mark.exists()


@pytest.mark.skipif(not os.path.isdir(os.path.join(NAYER_CHECKOUT, "label_embedding")),
                    reason="NAYER's checkout is not here")
def test_nayers_shipped_pickles_are_read_on_a_cpu():
    # saved from a GPU: the storages name a CUDA device, read here onto the CPU
    emb = label_embeddings(os.path.join(NAYER_CHECKOUT, "label_embedding", "cifar100_le.pickle"), 100)
    assert emb.shape == (100, 512) and emb.dtype == torch.float32
    assert emb.norm(dim=1).mean().item() == pytest.approx(10, abs=2)    # CLIP's unnormalised text features


def tiny_clip(folder):
    """A CLIP text model and tokenizer of a few dozen weights, saved as a Hugging Face folder (no download)."""
    transformers = pytest.importorskip("transformers")
    letters = string.ascii_lowercase + string.digits
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(folder))
    config = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=40,
                                         projection_dim=8, bos_token_id=vocab["<|startoftext|>"],
                                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    model = transformers.CLIPTextModelWithProjection(config).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return tokenizer, model


def test_clip_embeddings_of_a_tiny_clip_model(tmp_path):
    tokenizer, model = tiny_clip(tmp_path)
    names = ["aquarium_fish", "pickup-truck", "cat"]
    assert prompt(names[0]) == "a image of aquarium fish" and prompt(names[1]) == "a image of pickup truck"
    emb = label_embeddings("clip", 3, names, clip_model=str(tmp_path))      # loaded from the folder
    # auto takes CLIP where the model is on this machine, the offline hash where it is not (never a download)
    assert torch.equal(label_embeddings("auto", 3, names, clip_model=str(tmp_path)), emb)
    assert torch.equal(label_embeddings("auto", 3, names, clip_model=str(tmp_path / "absent")),
                       hash_embeddings(3, names))
    assert torch.equal(label_embeddings("auto", 3, None, clip_model=str(tmp_path)), hash_embeddings(3))
    tokens = tokenizer([prompt(n) for n in names], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**tokens).text_embeds
    assert emb.shape == (3, 8) and torch.allclose(emb, expected, atol=1e-6)
    assert not torch.allclose(emb[0], emb[2])
    # the synthesizer's generator starts from them, with the dataset's class names
    synth = nayer(label_embedding="clip", clip_model=str(tmp_path), num_classes=3, class_names=tuple(names))
    assert torch.allclose(synth.generator.label_embedding, expected, atol=1e-6)
    assert synth.noisy_layers.weight.shape[1:] == (32, 8)
    with pytest.raises(UsageError, match="needs class names"):
        label_embeddings("clip", 3, None, clip_model=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="could not be loaded"):
        label_embeddings("clip", 3, names, clip_model=str(tmp_path / "empty"))


def test_the_clip_source_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setattr("datafree.label_embedding.clip_available", lambda: False)
    with pytest.raises(UsageError, match=r"pip install \.\[clip\]"):
        datafree_kd.parse_args(["--method", "nayer", "--dataset", "digits", "--label_embedding", "clip"])
    assert datafree_kd.parse_args(["--method", "nayer", "--dataset", "digits"]).label_embedding == "auto"


@pytest.mark.parametrize("argv,message", [
    (["--g_loops", "0"], "--g_loops \\(0\\) must be at least 1"),
    (["--g_life", "0"], "--g_life \\(0\\) must be at least 1"),
    (["--label_embedding", "nowhere.pt"], "--label_embedding nowhere.pt: no such file"),
])
def test_impossible_nayer_flags(argv, message):
    with pytest.raises(UsageError, match=message):
        datafree_kd.parse_args(["--method", "nayer", "--dataset", "digits", "--label_embedding", "hash", *argv])
    with pytest.raises(UsageError, match="--g_life is not used by method 'fast'"):
        datafree_kd.parse_args(["--method", "fast", "--g_life", "5"])


def test_nayers_published_command_line_parses_and_the_presets_add_its_parsers_defaults():
    """A line of NAYER's scripts/nayer_100.sh, unchanged (its --method nayer, which its own parser refuses).
    Its parser's defaults for --T (20) and --bn_mmt (0.9) are not ours (1 and 0): the presets set them."""
    line = ("--batch_size 512 --synthesis_batch_size 400 --lr 0.2 --gpu 0 --warmup 20 --epochs 120 --dataset cifar10 "
            "--method nayer --lr_g 4e-3 --teacher wrn40_2 --student wrn16_1 --save_dir run/c10w402w161-nayer "
            "--adv 1.33 --bn 10.0 --oh 0.5 --g_steps 30 --g_life 10 --g_loops 2 --gwp_loops 10 "
            "--log_tag c10w402w161-nayer-ep120")
    args = datafree_kd.parse_args([*line.split(), "--label_embedding", "hash"])
    assert (args.g_loops, args.gwp_loops, args.g_life, args.le_emb_size, args.kd_steps) == (2, 10, 10, 1000, 400)
    preset = datafree_kd.parse_args(["--config", os.path.join(ROOT, "configs", "table1", "cifar10",
                                                                "nayer-wrn40_2-wrn16_1.yaml"), "--label_embedding",
                                     "hash"])
    for flag in ("batch_size", "synthesis_batch_size", "lr", "warmup", "epochs", "lr_g", "adv", "bn", "oh", "g_steps",
                 "g_life", "g_loops", "gwp_loops", "kd_steps", "ep_steps", "le_emb_size"):
        assert getattr(preset, flag) == getattr(args, flag), flag
    assert (args.T, args.bn_mmt) == (1.0, 0.0) and (preset.T, preset.bn_mmt) == (20, 0.9)


def test_export_command_writes_a_file_nayers_code_reads(tmp_path):
    out = str(tmp_path / "digits_le.pickle")
    export_main(["--dataset", "digits", "--source", "hash", "--out", out])
    with open(out, "rb") as f:
        emb = pickle.load(f)        # what NAYER's datafree_kd.py does with it
    assert torch.equal(emb, hash_embeddings(10, registry.class_names("digits")))


TINY = ["--method", "nayer", "--dataset", "digits", "--teacher", "resnet8", "--student", "resnet8", "--gpu", "-1",
        "--batch_size", "16", "--synthesis_batch_size", "12", "--kd_steps", "2", "--ep_steps", "4", "--lr", "0.05",
        "--T", "4", "--seed", "3", "--bn", "1", "--oh", "1", "--adv", "1", "--bn_mmt", "0.9", "--lr_g", "1e-3",
        "--g_steps", "2", "--label_embedding", "hash", "--le_emb_size", "32", "--g_loops", "2", "--gwp_loops", "3",
        "--g_life", "3", "--warmup", "1", "--epochs", "3"]


def test_stopped_between_two_rounds_of_an_epoch_it_resumes_to_the_same_end(teacher_file, monkeypatch):
    datafree_kd.main([*TINY, "--output", "full"])
    full = load_checkpoint("full/last.pth")
    assert full["synthesis_calls"] == 3 + 2 + 2 and full["kd_steps"] == 2 * 4    # warm-up: 3 rounds, then 2 an epoch
    assert full["synthesizer"]["pool"]["rows"] == 7 * 12
    assert "noisy_layers" not in json.dumps(list(full["synthesizer"]))           # re-drawn before any use

    real = nayer_module.NayerSynthesizer.synthesize

    def stop_after_fourth_call(self):
        out = real(self)
        if self.calls == 4:      # epoch 1, after the first of its two synthesis rounds
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(nayer_module.NayerSynthesizer, "synthesize", stop_after_fourth_call)
    with pytest.raises(SystemExit) as stopped:
        datafree_kd.run_cli(datafree_kd.main, [*TINY, "--output", "stopped"])
    assert stopped.value.code == 143
    monkeypatch.setattr(nayer_module.NayerSynthesizer, "synthesize", real)
    saved = load_checkpoint("stopped/last.pth")
    assert saved["epoch"] == 1 and saved["progress"]["calls_done"] == 1
    assert saved["progress"]["plan"] == [[2, 2], [0, 2]]
    datafree_kd.main([*TINY, "--output", "stopped", "--resume"])
    assert kill_soak.differences(kill_soak.final_state("stopped"), kill_soak.final_state("full")) == []
    resumed = load_checkpoint("stopped/last.pth")["synthesizer"]
    assert torch.equal(resumed["init_rng"], full["synthesizer"]["init_rng"])
    for a, b in zip(resumed["bn_hooks"], full["synthesizer"]["bn_hooks"]):
        assert torch.equal(a["ema_mean"], b["ema_mean"]) and torch.equal(a["ema_var"], b["ema_var"])
