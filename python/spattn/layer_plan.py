"""LayerPlan: which role each layer of a model plays for a method, one object shared by every
decode method (and the layer plans of MASFormer-style compositions).

Roles, per layer index:

- ``"dense"``: exact attention over every key, no selection;
- ``"sparse"``: the method selects for this layer and attends its selection (Quest, Double
  Sparsity, TokenSelect: every layer above the dense ones);
- ``"select"``: exact attention over every key, and the method's selection of this layer is
  stored for the layers that reuse it (TidalDecode's token-selection layers);
- ``"reuse"``: attend the positions stored by the latest ``"select"`` layer of the same decode
  step, query head h taking head h's positions (TidalDecode's sparse layers).

Layers not named take ``default``. A plan is data: :meth:`to_dict` / :meth:`from_dict` round-trip
it (JSON-friendly, e.g. into a ``.npz`` config entry).

>>> import spattn
>>> plan = spattn.LayerPlan.tidal(sparse_layer_start=2, correction_layer=13)
>>> [plan.role(i) for i in (0, 2, 3, 13, 20)]
['dense', 'select', 'reuse', 'select', 'reuse']
>>> spattn.LayerPlan.first_dense(2).role(1), spattn.LayerPlan.first_dense(2).role(5)
('dense', 'sparse')
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from ._validation import check_int

ROLES = ("dense", "sparse", "select", "reuse")


def _layer_set(layers: Iterable[int], name: str) -> Tuple[int, ...]:
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"{name} must be an iterable of layer indices, got {type(layers).__name__}")
    out = sorted({check_int(i, f"{name}[...]", lo=0) for i in layers})
    return tuple(out)


class LayerPlan:
    """The role of every layer (see the module docstring).

    Parameters
    ----------
    dense, sparse, select, reuse : iterables of int
        Layers of each role (each layer in at most one list).
    default : str, default "sparse"
        The role of the layers not listed.
    """

    def __init__(self, *, dense: Iterable[int] = (), sparse: Iterable[int] = (), select: Iterable[int] = (),
                 reuse: Iterable[int] = (), default: str = "sparse"):
        if default not in ROLES:
            raise ValueError(f"default must be one of {ROLES}, got {default!r}")
        self.default = default
        self.roles: Dict[int, str] = {}
        for role, layers in (("dense", dense), ("sparse", sparse), ("select", select), ("reuse", reuse)):
            for i in _layer_set(layers, role):
                if i in self.roles:
                    raise ValueError(f"layer {i} is given two roles: {self.roles[i]!r} and {role!r}")
                self.roles[i] = role

    # ------------------------------------------------------------------ builders
    @classmethod
    def first_dense(cls, n: int) -> "LayerPlan":
        """Layers 0 .. n - 1 dense, every other layer sparse (Quest's and Double Sparsity's plan)."""
        return cls(dense=range(check_int(n, "n", lo=0)))

    @classmethod
    def tidal(cls, sparse_layer_start: int = 2, correction_layer: Optional[int] = 13) -> "LayerPlan":
        """TidalDecode's plan: layers below `sparse_layer_start` dense, token selection at
        `sparse_layer_start` and at `correction_layer` (re-selection; None or a value <=
        sparse_layer_start: none), every other layer reusing the latest selection."""
        start = check_int(sparse_layer_start, "sparse_layer_start", lo=0)
        sel = [start]
        if correction_layer is not None and check_int(correction_layer, "correction_layer", lo=0) > start:
            sel.append(int(correction_layer))
        return cls(dense=range(start), select=sel, default="reuse")

    @classmethod
    def dense_layers(cls, num_layers: int, count: int, placement: str = "evenly") -> "LayerPlan":
        """`count` of `num_layers` layers dense, the others sparse: ``"bottom"`` (the first
        count), ``"top"`` (the last count) or ``"evenly"`` (spaced as round(i * num_layers /
        count + (num_layers / count - 1) / 2), i < count: centred in equal strata)."""
        L = check_int(num_layers, "num_layers", lo=1)
        c = check_int(count, "count", lo=0, hi=L)
        if placement == "bottom":
            layers = range(c)
        elif placement == "top":
            layers = range(L - c, L)
        elif placement == "evenly":
            layers = sorted({min(L - 1, int(i * L / c + (L / c - 1) / 2 + 0.5)) for i in range(c)}) if c else []
        else:
            raise ValueError(f"placement must be 'evenly', 'bottom' or 'top', got {placement!r}")
        return cls(dense=layers, default="sparse")

    # ------------------------------------------------------------------ queries
    def role(self, layer: int) -> str:
        """The role of `layer` (one of ``"dense"``, ``"sparse"``, ``"select"``, ``"reuse"``)."""
        return self.roles.get(check_int(layer, "layer", lo=0), self.default)

    def layers(self, role: str, num_layers: int) -> Tuple[int, ...]:
        """The layers of `role` among 0 .. num_layers - 1."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return tuple(i for i in range(check_int(num_layers, "num_layers", lo=0)) if self.role(i) == role)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {r: sorted(i for i, x in self.roles.items() if x == r) for r in ROLES}
        d["default"] = self.default
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerPlan":
        if not isinstance(d, Mapping):
            raise TypeError(f"a layer plan dict must be a mapping, got {type(d).__name__}")
        unknown = set(d) - set(ROLES) - {"default"}
        if unknown:
            raise ValueError(f"unknown layer plan keys {sorted(unknown)}; expected {list(ROLES)} and 'default'")
        return cls(**{k: d[k] for k in d})

    @classmethod
    def coerce(cls, plan: Any, name: str = "layer_plan") -> "LayerPlan":
        """A LayerPlan from a LayerPlan or its dict form (TypeError otherwise)."""
        if isinstance(plan, LayerPlan):
            return plan
        if isinstance(plan, Mapping):
            return cls.from_dict(plan)
        raise TypeError(f"{name} must be a spattn.LayerPlan or its dict form, got {type(plan).__name__}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerPlan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        parts = [f"{r}={v}" for r, v in self.to_dict().items() if r != "default" and v]
        return f"LayerPlan({', '.join(parts + [f'default={self.default!r}'])})"


__all__ = ["LayerPlan", "ROLES"]
