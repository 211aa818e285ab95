"""Feature and cohort schemas: what each column means, its kind, unit and clinically valid range."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fedehr.errors import InputError

Kind = Literal["numeric", "binary", "categorical"]
KINDS: tuple[str, ...] = ("numeric", "binary", "categorical")


@dataclass(frozen=True)
class FeatureSpec:
    """One static or temporal variable.

    ``valid_min``/``valid_max`` bound clinically possible values (loaders drop and count values outside);
    ``categories`` lists the labels of a categorical feature, whose values are stored as integer codes.
    """

    name: str
    kind: Kind = "numeric"
    unit: str = ""
    valid_min: float = -math.inf
    valid_max: float = math.inf
    categories: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise InputError("feature name is empty", field="name")
        if self.kind not in KINDS:
            raise InputError(f"unknown kind for feature {self.name!r}", field="kind", value=self.kind,
                             expected=" | ".join(KINDS))
        if self.valid_min > self.valid_max:
            raise InputError(f"feature {self.name!r}: valid_min > valid_max", field="valid_min",
                             value=(self.valid_min, self.valid_max))
        if self.kind == "categorical" and len(self.categories) < 2:
            raise InputError(f"categorical feature {self.name!r} needs >= 2 categories", field="categories",
                             value=self.categories)
        if self.kind == "binary":
            object.__setattr__(self, "valid_min", max(self.valid_min, 0.0))
            object.__setattr__(self, "valid_max", min(self.valid_max, 1.0))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["categories"] = list(self.categories)
        d["valid_min"] = None if math.isinf(self.valid_min) else self.valid_min
        d["valid_max"] = None if math.isinf(self.valid_max) else self.valid_max
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        allowed = {"name", "kind", "unit", "valid_min", "valid_max", "categories", "description"}
        unknown = set(d) - allowed
        if unknown:
            raise InputError("unknown keys in feature spec", field=",".join(sorted(unknown)),
                             expected=", ".join(sorted(allowed)))
        d = dict(d)
        d["valid_min"] = -math.inf if d.get("valid_min") is None else float(d["valid_min"])
        d["valid_max"] = math.inf if d.get("valid_max") is None else float(d["valid_max"])
        d["categories"] = tuple(d.get("categories", ()))
        return cls(**d)


@dataclass(frozen=True)
class Schema:
    """The layout shared by a real cohort and every synthetic cohort drawn from it.

    temporal values live on a grid of ``n_bins = hours / bin_hours`` bins starting at ICU admission.
    """

    temporal: tuple[FeatureSpec, ...]
    static: tuple[FeatureSpec, ...] = ()
    labels: tuple[str, ...] = ("mortality",)
    hours: float = 48.0
    bin_hours: float = 1.0
    source: str = ""
    site_by: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.temporal:
            raise InputError("schema has no temporal features", field="temporal")
        if not (self.hours > 0 and self.bin_hours > 0):
            raise InputError("hours and bin_hours must be > 0", field="hours/bin_hours",
                             value=(self.hours, self.bin_hours))
        ratio = self.hours / self.bin_hours
        if abs(ratio - round(ratio)) > 1e-6:
            raise InputError("hours must be a whole multiple of bin_hours", field="bin_hours",
                             value=(self.hours, self.bin_hours))
        for group, specs in (("temporal", self.temporal), ("static", self.static)):
            names = [f.name for f in specs]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise InputError(f"duplicate {group} feature names", field=group, value=dup)

    @property
    def n_bins(self) -> int:
        return round(self.hours / self.bin_hours)

    @property
    def temporal_names(self) -> list[str]:
        return [f.name for f in self.temporal]

    @property
    def static_names(self) -> list[str]:
        return [f.name for f in self.static]

    def temporal_index(self, name: str) -> int:
        try:
            return self.temporal_names.index(name)
        except ValueError:
            raise InputError("unknown temporal feature", field="temporal", value=name,
                             expected=", ".join(self.temporal_names)) from None

    def static_index(self, name: str) -> int:
        try:
            return self.static_names.index(name)
        except ValueError:
            raise InputError("unknown static feature", field="static", value=name,
                             expected=", ".join(self.static_names)) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "temporal": [f.to_dict() for f in self.temporal],
            "static": [f.to_dict() for f in self.static],
            "labels": list(self.labels),
            "hours": self.hours,
            "bin_hours": self.bin_hours,
            "source": self.source,
            "site_by": self.site_by,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        return cls(
            temporal=tuple(FeatureSpec.from_dict(f) for f in d["temporal"]),
            static=tuple(FeatureSpec.from_dict(f) for f in d.get("static", [])),
            labels=tuple(d.get("labels", ("mortality",))),
            hours=float(d.get("hours", 48.0)),
            bin_hours=float(d.get("bin_hours", 1.0)),
            source=str(d.get("source", "")),
            site_by=str(d.get("site_by", "")),
            extra=dict(d.get("extra", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def differences(self, other: Schema) -> list[str]:
        """Every way ``other`` is incompatible with this schema (empty when compatible)."""
        out: list[str] = []
        if self.temporal_names != other.temporal_names:
            a, b = set(self.temporal_names), set(other.temporal_names)
            if a - b:
                out.append(f"temporal features missing from the second set: {sorted(a - b)}")
            if b - a:
                out.append(f"temporal features only in the second set: {sorted(b - a)}")
            if a == b:
                out.append("temporal features are in a different order")
        else:
            for f, g in zip(self.temporal, other.temporal, strict=True):
                if f.kind != g.kind:
                    out.append(f"temporal feature {f.name!r}: kind {f.kind} vs {g.kind}")
        if self.static_names != other.static_names:
            out.append(f"static features differ: {self.static_names} vs {other.static_names}")
        else:
            for f, g in zip(self.static, other.static, strict=True):
                if f.kind != g.kind:
                    out.append(f"static feature {f.name!r}: kind {f.kind} vs {g.kind}")
        if self.n_bins != other.n_bins or self.bin_hours != other.bin_hours:
            out.append(f"time grid: {self.hours} h in {self.bin_hours} h bins vs "
                       f"{other.hours} h in {other.bin_hours} h bins")
        if tuple(self.labels) != tuple(other.labels):
            out.append(f"labels: {list(self.labels)} vs {list(other.labels)}")
        return out
