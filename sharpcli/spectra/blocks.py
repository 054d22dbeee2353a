"""The parameter blocks of a spectrum: the whole network, each module (`--per-layer`), or the
groups a `--blocks` spec names (docs/guides/large-models.md#blocks), some of them parts of
one parameter.

A block's Hessian is the diagonal block of H on its coordinates. When a block takes whole
parameters it is the Hessian operator of those parameters; when it takes part of one (the
query third of a fused query-key-value weight), it is the principal submatrix R H_p Rᵀ of
the block H_p of the parameters it touches, R selecting its coordinates
(linalg.Restricted): each product costs one product of H_p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sharpcli.errors import SharpError
from sharpcli.hessian.params import named_param_groups, trainable_params
from sharpcli.spectra.block_spec import RESERVED, Item, parse_blocks

QKV = ("query", "key", "value")
# the GPT-2 preset: per layer, the modules Zhang et al. (2024) take a spectrum of
GPT2_FUSED = "attn.c_attn"
GPT2_MODULES = ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")
GPT2_EMBEDDING = "wte"


@dataclass(frozen=True)
class Piece:
    """A parameter, or the slice [start, stop) of it along `dim` (None: all of it)."""

    name: str
    param: nn.Parameter
    part: tuple[int, int, int] | None = None

    def coords(self) -> torch.Tensor:
        """The piece's indices into the parameter's flat (row-major) vector, increasing."""
        index = torch.arange(self.param.numel(), device=self.param.device)
        if self.part is None:
            return index
        dim, start, stop = self.part
        return index.view(self.param.shape).narrow(dim, start, stop - start).reshape(-1)


@dataclass
class Block:
    """The parameters a block touches, in model order, and its coordinates in their
    concatenation (None: all of them)."""

    params: list[nn.Parameter]
    coords: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params) if self.coords is None else len(self.coords)

    @classmethod
    def of(cls, pieces: list[Piece], order: dict[int, int]) -> "Block":
        """The block of these pieces: a parameter named by several pieces is covered by the
        union of their slices."""
        by_param: dict[int, list[Piece]] = {}
        for piece in pieces:
            by_param.setdefault(id(piece.param), []).append(piece)
        ids = sorted(by_param, key=order.__getitem__)
        params = [by_param[i][0].param for i in ids]
        if all(p.part is None for group in by_param.values() for p in group):
            return cls(params)
        coords, offset = [], 0
        for i, p in zip(ids, params):
            group = by_param[i]
            whole = any(piece.part is None for piece in group)
            mine = group[0].coords() if whole else torch.cat([piece.coords() for piece in group])
            coords.append(torch.unique(mine) + offset)
            offset += p.numel()
        return cls(params, torch.cat(coords))


def parameter_blocks(model: nn.Module, per_layer: bool = False,
                     blocks: str | None = None) -> dict[str, Block]:
    """{"all": every trainable parameter}, then with `per_layer` one block per module that
    owns parameters (named as in the model, e.g. "fc1", "layer1.0.conv1"), or the groups of
    a `blocks` spec (block_spec), in the order the spec names them."""
    out = {RESERVED: Block(trainable_params(model))}
    if per_layer:
        out.update({name: Block(params) for name, params in named_param_groups(model).items()})
    if blocks is not None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        order = {id(p): i for i, (_, p) in enumerate(named)}
        for name, pieces in spec_groups(model, named, parse_blocks(blocks)).items():
            out[name] = Block.of(pieces, order)
    return out


def spec_groups(model: nn.Module, named: list[tuple[str, nn.Parameter]],
                items: list[Item]) -> dict[str, list[Piece]]:
    """Each group of the spec as the pieces of parameters it holds; a group named twice, or
    an item that matches nothing, is a SharpError."""
    groups: dict[str, list[Piece]] = {}
    for item in items:
        found = gpt2_groups(model, named) if item.preset else _pattern_groups(model, named, item)
        for name, pieces in found.items():
            if name == RESERVED or name in groups:
                raise SharpError(f"{{blocks}} {item.text!r}: the group {name!r} is named twice "
                                 "(give it another name with NAME=PATTERN)", param="blocks")
            groups[name] = pieces
    return groups


def _pattern_groups(model: nn.Module, named, item: Item) -> dict[str, list[Piece]]:
    groups: dict[str, list[Piece]] = {}
    for name, p in named:
        match = item.pattern.search(name)
        if match is None:
            continue
        cut = name.find(".", max(match.end() - 1, match.start()))
        key = item.name or (name if cut < 0 else name[:cut])
        groups.setdefault(key, []).append(Piece(name, p))
    if not groups:
        sample = ", ".join(n for n, _ in named[:4])
        raise SharpError(f"{{blocks}} {item.text!r} matches no parameter name (they read like "
                         f"{sample}, …)", param="blocks")
    if item.qkv:
        return {f"{key}.{part}": pieces for key, group in groups.items()
                for part, pieces in zip(QKV, split_qkv(model, group, item.text))}
    return groups


def split_qkv(model: nn.Module, pieces: list[Piece], what: str) -> list[list[Piece]]:
    """The query, key and value thirds of fused projections, each parameter cut along its
    output features: dim 0 of an nn.Linear's weight (out, in) and of any bias, the last dim
    of another 2-D weight (GPT-2's Conv1D keeps (in, out))."""
    thirds: list[list[Piece]] = [[], [], []]
    for piece in pieces:
        p = piece.param
        owner = model.get_submodule(piece.name.rpartition(".")[0])
        dim = 0 if isinstance(owner, nn.Linear) or p.ndim == 1 else p.ndim - 1
        if p.shape[dim] % 3:
            raise SharpError(f"{{blocks}} {what!r}: {piece.name} has {p.shape[dim]} output "
                             "features, not three equal parts of a fused query-key-value "
                             "projection", param="blocks")
        third = p.shape[dim] // 3
        for i in range(3):
            thirds[i].append(Piece(piece.name, p, (dim, i * third, (i + 1) * third)))
    return thirds


def gpt2_groups(model: nn.Module, named) -> dict[str, list[Piece]]:
    """The GPT-2 preset: the token embedding, then per layer the query, key and value thirds
    of the fused `attn.c_attn`, `attn.c_proj`, `mlp.c_fc` and `mlp.c_proj`, each weight with
    its bias: the blocks whose spectra Zhang et al. (NeurIPS 2024) compare. Names as the
    model's: Hugging Face's GPT2LMHeadModel and nanoGPT both read
    transformer.h.<i>.attn.c_attn.weight."""
    layers = [n[:-len(GPT2_FUSED + ".weight")] for n, _ in named
              if n.endswith(f"{GPT2_FUSED}.weight")]
    if not layers:
        raise SharpError(f"{{blocks}} gpt2: no parameter is named like …{GPT2_FUSED}.weight (the "
                         "fused query-key-value projection of GPT-2); write patterns instead",
                         param="blocks")
    groups: dict[str, list[Piece]] = {}
    for n, p in named:
        if n.endswith(f"{GPT2_EMBEDDING}.weight"):
            groups[n.rpartition(".")[0]] = [Piece(n, p)]
    for prefix in layers:
        def module(suffix):
            return [Piece(n, p) for n, p in named if n.rpartition(".")[0] == prefix + suffix]
        for part, pieces in zip(QKV, split_qkv(model, module(GPT2_FUSED), "gpt2")):
            groups[f"{prefix}attn.{part}"] = pieces
        for suffix in GPT2_MODULES:
            if module(suffix):
                groups[prefix + suffix] = module(suffix)
    return groups
