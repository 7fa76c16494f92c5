"""Client peak memory of every LM method, measured with the project's one accounting (fedlib/memory.py).

For each method the client's whole step runs inside ``memory.measure`` after one warm-up step, so the
optimiser state and gradient buffers of a steady-state step are resident (parameters, frozen ones too,
+ gradient buffers + optimiser state) and everything the step allocates is transient:

    fedavg / fedlora    forward + backward of the whole model, optimiser step (all weights / LoRA + head)
    splitfed / splitlora  client segment forward, backward of the returned dl/dz, optimiser step
    csefsl              client segment + auxiliary head forward, backward, optimiser step
    heron (_lora)       ZO forward scheme over (client, aux): l(theta), l(theta + mu u), in-place update
    musplitfed (_lora)  h, h+ and h- forwards of the client segment (no graph), in-place ZO update

Models: MiniLM (fedlib/lm.py) at the training setting, and random-weight GPT-2 / OPT of the papers'
shapes (HERON Table III, MU-SplitFed Table 1) with a pooled 2-class head, fp32 on the CPU.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedlib import memory
from fedlib.zo import ZOEstimator

# transformers config kwargs of the papers' architectures (random weights, no download)
PAPER_SHAPES = {
    "gpt2": ("gpt2", {"n_layer": 12, "n_embd": 768, "n_head": 12}),
    "gpt2-medium": ("gpt2", {"n_layer": 24, "n_embd": 1024, "n_head": 16}),
    "opt-125m": ("opt", {"hidden_size": 768, "num_hidden_layers": 12, "ffn_dim": 3072, "num_attention_heads": 12,
                         "word_embed_proj_dim": 768}),
    "opt-350m": ("opt", {"hidden_size": 1024, "num_hidden_layers": 24, "ffn_dim": 4096, "num_attention_heads": 16,
                         "word_embed_proj_dim": 512, "do_layer_norm_before": False}),
    "opt-1.3b": ("opt", {"hidden_size": 2048, "num_hidden_layers": 24, "ffn_dim": 8192, "num_attention_heads": 32,
                         "word_embed_proj_dim": 2048}),
}
LORA_TARGETS = {"gpt2": ("c_attn",), "opt": ("q_proj", "v_proj")}


class Pooled(nn.Module):
    """A decoder's hidden states -> masked mean pool -> linear classes (the split methods' head)."""

    def __init__(self, body: nn.Module, width: int, num_classes: int = 2, head: bool = True):
        super().__init__()
        self.body, self.head = body, nn.Linear(width, num_classes) if head else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.body(input_ids=ids).last_hidden_state
        return self.head(h.mean(1)) if self.head is not None else h


def paper_model(name: str, layers: int | None = None, lora_rank: int = 0, head: bool = True) -> Pooled:
    """Random-weight GPT-2 / OPT body of ``name`` (``layers``: only the first blocks, a client segment)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2Model, OPTConfig, OPTModel

    family, kw = PAPER_SHAPES[name]
    kw = dict(kw)
    if family == "gpt2":
        if layers is not None:
            kw["n_layer"] = layers
        config = GPT2Config(**kw, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        body, width = GPT2Model(config), config.n_embd
    else:
        if layers is not None:
            kw["num_hidden_layers"] = layers
        config = OPTConfig(**kw, dropout=0.0, attention_dropout=0.0)
        body, width = OPTModel(config), config.word_embed_proj_dim
    model = Pooled(body, width, head=head)
    if lora_rank:
        from peft import LoraConfig, inject_adapter_in_model
        inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                                           target_modules=list(LORA_TARGETS[family])), model)
        for n, p in model.named_parameters():
            p.requires_grad = "lora_" in n or n.startswith("head.")
    return model


@dataclass
class Setting:
    batch: int
    length: int
    optimizer: str = "adam"      # adam | sgd
    lr: float = 1e-5
    mu: float = 1e-3


def _optimizer(params, s: Setting):
    return torch.optim.Adam(params, lr=s.lr) if s.optimizer == "adam" else torch.optim.SGD(params, lr=s.lr)


def fo_step(forward: Callable[[], torch.Tensor], params: list[torch.Tensor], s: Setting, backward=None):
    """A first-order client step: forward, backward (of a loss, or of the returned dl/dz), update."""
    opt = _optimizer(params, s)

    def step():
        out = forward()
        if backward is None:
            out.backward()
        else:
            out.backward(backward(out))
        opt.step()
        opt.zero_grad(set_to_none=False)       # gradient buffers persist, as in the engine's flat buffer
    return step, opt


def zo_step(loss: Callable[[], float], params: list[torch.Tensor], s: Setting, scheme: str = "forward"):
    """A zeroth-order client step: the estimator's forwards (no graph) and the in-place update."""
    zo = ZOEstimator(params, s.mu, 1, scheme, "gaussian")
    seeds = iter(range(10 ** 6))

    @torch.no_grad()
    def step():
        est = zo.estimate(loss, next(seeds))
        zo.step_(est, s.lr)
    return step, None


def measure_step(step: Callable[[], None], model: nn.Module, opt, extra: tuple[nn.Module, ...] = ()) -> dict:
    """Warm-up step, then the measured one; resident = every parameter (frozen too), gradient buffers
    and optimiser state of the modules the client holds."""
    step()
    modules = (model, *extra)
    params = [p for m in modules for p in m.parameters()]
    resident = params + [p.grad for p in params if p.grad is not None]
    if opt is not None:
        resident += memory.optimizer_state(opt)
    _, rep = memory.measure(step, resident=resident)
    n_params = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"peak_bytes": rep.peak, "resident_bytes": rep.resident, "transient_bytes": rep.transient,
            "params": n_params, "trainable": trainable, "tracker": rep.tracker}


def method_steps(label: str, full: Callable[[int], nn.Module], client: Callable[[int], nn.Module],
                 width: int, s: Setting, ids: torch.Tensor, y: torch.Tensor):
    """(step, modules held by the client, optimiser) of one method's client step.
    ``full(lora_rank)`` builds the whole model with its head, ``client(lora_rank)`` the client segment
    returning hidden states (B, L, H)."""
    lora = 4 if label.endswith("lora") else 0
    trainable = lambda *ms: [p for m in ms for p in m.parameters() if p.requires_grad]
    if label in ("fedavg", "fedlora"):
        m = full(lora)
        step, opt = fo_step(lambda: F.cross_entropy(m(ids), y), trainable(m), s)
        return step, (m,), opt
    c = client(lora)
    if label in ("splitfed_v2", "splitlora"):
        step, opt = fo_step(lambda: c(ids), trainable(c), s, backward=lambda z: torch.randn_like(z))
        return step, (c,), opt
    aux = nn.Linear(width, 2)
    if label == "csefsl":
        step, opt = fo_step(lambda: F.cross_entropy(aux(c(ids).mean(1)), y), trainable(c, aux), s)
        return step, (c, aux), opt
    if label.startswith("heron"):
        step, opt = zo_step(lambda: F.cross_entropy(aux(c(ids).mean(1)), y).item(), trainable(c, aux), s)
        return step, (c, aux), opt
    if label.startswith("musplitfed"):
        zo = ZOEstimator(trainable(c), s.mu, 1, "central", "gaussian")

        @torch.no_grad()
        def step():
            h = c(ids)
            with zo.u.perturbed(1, s.mu):
                plus = c(ids)
            with zo.u.perturbed(1, -s.mu):
                minus = c(ids)
            del h, plus, minus                   # sent to the server; delta comes back as one scalar
            zo.u.add_(1, -s.lr * 0.1)
        return step, (c,), None
    raise ValueError(f"lm memory: unknown method {label!r}")


class Hidden(nn.Module):
    """A MiniLM client segment with its output [h | m] reduced to h (the memory steps' interface)."""

    def __init__(self, segment: nn.Module):
        super().__init__()
        self.segment = segment

    def forward(self, x):
        return self.segment(x)[..., :-1]


# the papers' client peak memory (GB), as they report it
PAPER_CLAIMS = {
    "HERON Table III (GPT-2, LoRA)": {"heron_lora": 4.03, "csefsl": 9.09, "splitlora": 4.59},
    "MU-SplitFed (OPT-1.3B, SST-2)": {"musplitfed": 1.05, "fedavg": 8.02, "fedlora": 5.64},
}


def minilm_rows(methods: list[str], length: int, batch: int, cut: str, lora_rank: int, optimizer: str = "sgd",
                pretrained: bool = True) -> dict:
    """Client peak of each LM label on MiniLM at the training setting (SGD as trained, fp32)."""
    from fedlib.lm import minilm

    s = Setting(batch, length, optimizer)
    torch.manual_seed(0)
    ids = torch.stack([torch.randint(1000, 5000, (batch, length)), torch.ones(batch, length, dtype=torch.long)], 1)
    y = torch.randint(0, 2, (batch,))

    def full(r):
        return minilm((2, length), 2, lora_rank=r and lora_rank, pretrained=pretrained)

    def client(r):
        return Hidden(full(r).split(cut)[0])

    rows = {}
    for label in methods:
        step, modules, opt = method_steps(label, full, client, 384, s, ids, y)
        rows[label] = measure_step(step, modules[0], opt, modules[1:])
    return rows


def paper_rows(name: str, methods: list[str], s: Setting, client_layers: int) -> dict:
    """Client peak of each label on a random-weight paper model; the client holds the embeddings and the
    first ``client_layers`` blocks (its segment), FedAvg / FedLoRA the whole model."""
    family = PAPER_SHAPES[name][0]
    vocab = 50257 if family == "gpt2" else 50272
    torch.manual_seed(0)
    ids, y = torch.randint(0, vocab, (s.batch, s.length)), torch.randint(0, 2, (s.batch,))
    probe = paper_model(name, layers=1, head=False)
    width = probe.body.config.n_embd if family == "gpt2" else probe.body.config.word_embed_proj_dim
    del probe
    rows = {}
    for label in methods:
        step, modules, opt = method_steps(label, lambda r: paper_model(name, lora_rank=r),
                                          lambda r: paper_model(name, client_layers, r, head=False), width, s, ids, y)
        rows[label] = measure_step(step, modules[0], opt, modules[1:])
        del step, modules, opt
    return rows


def gib_table(rows: dict, claims: dict | None = None) -> str:
    """Markdown: peak (GiB), resident and transient, parameters held / trained, and the paper's GB."""
    head = "| method | client peak (GiB) | resident (GiB) | transient (GiB) | params held | trained |"
    lines = [head + (" paper (GB) |" if claims else ""), "|" + "---|" * (6 + bool(claims))]
    for label, r in rows.items():
        line = (f"| {label} | {r['peak_bytes'] / 2**30:.3f} | {r['resident_bytes'] / 2**30:.3f} | "
                f"{r['transient_bytes'] / 2**30:.3f} | {r['params'] / 1e6:.1f} M | {r['trainable'] / 1e6:.3f} M |")
        if claims:
            line += f" {claims.get(label, '—')} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


HERON_METHODS = ["splitlora", "csefsl", "heron", "heron_lora"]
MU_METHODS = ["fedavg", "fedlora", "musplitfed", "musplitfed_lora"]


def paper_tables(models: list[str], batch: int, length: int, client_layers: int) -> tuple[dict, str]:
    """({model: rows}, markdown) for the papers' shapes: GPT-2 with HERON's methods, OPT with MU-SplitFed's.
    OPT-1.3B's full FedAvg with Adam would hold about 21 GiB of parameters, gradients and Adam state,
    beyond this machine, so it is left out there."""
    s = Setting(batch, length, "adam")
    tables = {}
    md = [(f"Client peak memory (GiB = 2^30 bytes), fp32 on the CPU, batch {batch} x {length} tokens, Adam for "
           f"first-order steps, pooled 2-class head; split clients hold the embeddings and the first {client_layers} "
           "blocks; 'paper (GB)': the paper's reported number (its own model, precision and batch)."), ""]
    for name in models:
        gpt = name.startswith("gpt2")
        methods = HERON_METHODS if gpt else MU_METHODS
        if name == "opt-1.3b":
            methods = [m for m in methods if m != "fedavg"]
        tables[name] = paper_rows(name, methods, s, client_layers)
        claims = PAPER_CLAIMS["HERON Table III (GPT-2, LoRA)" if gpt else "MU-SplitFed (OPT-1.3B, SST-2)"]
        md += [f"### {name}", "", gib_table(tables[name], claims)]
        if name == "opt-1.3b":
            held = tables[name]["fedlora"]["params"] - tables[name]["fedlora"]["trainable"]   # the base model
            md += [f"FedAvg (full fine-tuning with Adam) is not measured at this shape: its parameters, gradients and "
                   f"two Adam moments alone are 16 bytes x {held / 1e9:.2f} B parameters = {16 * held / 2**30:.1f} "
                   "GiB, beyond this machine's memory.", ""]
    return tables, "\n".join(md)
