"""ResourceQuota: usage, status and the admission check, as the real API server does them.

A namespace's quotas cap what its objects may consume. The quota controller keeps each
quota's `status.used` up to date, and the `ResourceQuota` admission plugin refuses a
create that would take usage past a `hard` limit with a 403 whose text users know:

    pods "x" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2
    pods "x" is forbidden: failed quota: q: must specify limits.memory for: build,helper

Quantities are printed as `resource.Quantity.String()` prints them (`1536Mi`, `500m`,
`1k`), because the messages and `status` carry those strings. Pure functions over dicts;
the control plane supplies the namespace's objects.

Taken from kubernetes/kubernetes (v1.34):
- staging/src/k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go:
  `CheckRequest` (constraints of every matching quota first, then limits quota by quota)
  and `prettyPrint` (`name=value` sorted by name, joined by "," without spaces);
  messages "failed quota: %s: %v" and "exceeded quota: %s, requested: %s, used: %s,
  limited: %s", wrapped by `admission.NewForbidden` as `<resource> "<name>" is
  forbidden: <message>`.
- pkg/quota/v1/evaluator/core/pods.go: `Constraints` ("must specify %s", each item
  "<resource> for: <containers>" joined by "; "), `podComputeUsageHelper`,
  `PodUsageFunc`, `QuotaV1Pod` and the quota scopes.
- staging/src/k8s.io/component-helpers/resource/helpers.go: pod requests and limits
  (sum of containers, at least the largest init container, sidecars included).
- staging/src/k8s.io/apiserver/pkg/quota/v1/generic/evaluator.go: object counts
  (`count/<resource>`, and the legacy `secrets`, `configmaps`, `resourcequotas`).
- staging/src/k8s.io/apimachinery/pkg/api/resource/quantity.go: `CanonicalizeBytes`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_UP, Decimal
from typing import Any

from .podspec import qos_class
from .selectors import SelectorError, parse_quantity
from .store import ApiError

Obj = dict[str, Any]
Lister = Callable[[str], Iterable[Obj]]

DECIMAL_SI, BINARY_SI, DECIMAL_EXPONENT = "DecimalSI", "BinarySI", "DecimalExponent"
_BINARY_SUFFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DECIMAL_SUFFIXES = {-9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T",
                     15: "P", 18: "E"}
_EXPONENT = re.compile(r"[eE][+-]?[0-9]+$")
_NANO = Decimal("1e-9")


@dataclass(frozen=True)
class Quantity:
    """A `resource.Quantity`: a value and the format its canonical text uses."""

    value: Decimal
    format: str = DECIMAL_SI

    @classmethod
    def parse(cls, raw: object) -> Quantity:
        """Parse quantity text (or a JSON number) as the API server decodes it.

        Raises:
            SelectorError: the text is not a quantity.
        """
        text = str(raw).strip()
        value = parse_quantity(text)
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -9:
            value = value.quantize(_NANO, rounding=ROUND_UP)  # rounded up to nano units
        if text.endswith(_BINARY_SUFFIXES[1:]):
            return cls(value, BINARY_SI)
        return cls(value, DECIMAL_EXPONENT if _EXPONENT.search(text) else DECIMAL_SI)

    def plus(self, other: Quantity) -> Quantity:
        """`Quantity.Add`: the sum keeps this format, or takes the other's if this is zero."""
        return Quantity(self.value + other.value,
                        other.format if self.value == 0 else self.format)

    def __str__(self) -> str:
        value, fmt = self.value, self.format
        if value == 0:
            return "0"
        if fmt == BINARY_SI:
            if -1024 < value < 1024 or value != value.to_integral_value():
                fmt = DECIMAL_SI  # small or fractional values are not shown in Ki, Mi, ...
            else:
                mantissa, power = int(value), 0
                while mantissa % 1024 == 0 and power < len(_BINARY_SUFFIXES) - 1:
                    mantissa //= 1024
                    power += 1
                return f"{mantissa}{_BINARY_SUFFIXES[power]}"
        sign, digits, exponent = value.normalize().as_tuple()
        assert isinstance(exponent, int)
        mantissa = int("".join(map(str, digits))) * (-1 if sign else 1)
        shift = exponent % 3  # the exponent goes down to a multiple of three
        mantissa, exponent = mantissa * 10 ** shift, exponent - shift
        if fmt == DECIMAL_SI and exponent in _DECIMAL_SUFFIXES:
            return f"{mantissa}{_DECIMAL_SUFFIXES[exponent]}"
        return f"{mantissa}e{exponent}" if exponent else str(mantissa)


ZERO = Quantity(Decimal(0))
ONE = Quantity(Decimal(1))
Usage = dict[str, Quantity]


def canonical(raw: object) -> str:
    """The text the API server stores for a quantity (`0.5` -> `500m`, `1.5Gi` -> `1536Mi`).

    Raises:
        SelectorError: the text is not a quantity.
    """
    return str(Quantity.parse(raw))


def _add(total: Usage, more: Mapping[str, Quantity]) -> Usage:
    """`quota.Add`/`addResourceList`: sum per name, keeping the first non-zero format."""
    for name, quantity in more.items():
        total[name] = total[name].plus(quantity) if name in total else quantity
    return total


def _max(total: Usage, more: Mapping[str, Quantity]) -> None:
    for name, quantity in more.items():
        if name not in total or quantity.value > total[name].value:
            total[name] = quantity


def _parse_list(values: Mapping[str, Any] | None) -> Usage:
    parsed: Usage = {}
    for name, raw in (values or {}).items():
        try:
            parsed[name] = Quantity.parse(raw)
        except SelectorError:
            continue  # validation refuses such pods before admission
    return parsed


def _container_resources(container: Mapping[str, Any]) -> tuple[Usage, Usage]:
    """A container's requests and limits; requests default to limits (SetDefaults_Pod)."""
    resources = container.get("resources") or {}
    limits = _parse_list(resources.get("limits"))
    return {**limits, **_parse_list(resources.get("requests"))}, limits


def _aggregate(spec: Mapping[str, Any], which: int) -> Usage:
    """Pod requests (0) or limits (1): containers and sidecars summed, init containers max'd."""
    result: Usage = {}
    for container in spec.get("containers") or []:
        _add(result, _container_resources(container)[which])
    sidecars: Usage = {}
    init: Usage = {}
    for container in spec.get("initContainers") or []:
        own = _container_resources(container)[which]
        if container.get("restartPolicy") == "Always":
            _add(result, own)
            _add(sidecars, own)
            during = dict(sidecars)
        else:
            during = _add(dict(own), sidecars)
        _max(init, during)
    _max(result, init)
    return result


def pod_limits(spec: Mapping[str, Any]) -> Usage:
    """A pod's limits as `PodLimits` computes them (the kubelet's eviction manager)."""
    return _aggregate(spec, 1)


def _is_extended(name: str) -> bool:
    """Neither a native resource nor already a quota name (`example.com/gpu`)."""
    return "/" in name and "kubernetes.io/" not in name and not name.startswith("requests.")


def _compute_usage(requests: Mapping[str, Quantity], limits: Mapping[str, Quantity]) -> Usage:
    """`podComputeUsageHelper`: the quota names a set of requests and limits consumes."""
    result: Usage = {"pods": ONE}
    for resource in ("cpu", "memory", "ephemeral-storage"):
        if resource in requests:
            result[resource] = result[f"requests.{resource}"] = requests[resource]
        if resource in limits:
            result[f"limits.{resource}"] = limits[resource]
    for name, quantity in requests.items():
        if name.startswith("hugepages-"):
            result[name] = result[f"requests.{name}"] = quantity
        if _is_extended(name):
            result[f"requests.{name}"] = quantity
    return result


def _timestamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def charged(pod: Obj, now: float) -> bool:
    """`QuotaV1Pod`: finished pods, and pods stuck terminating past their grace, are free."""
    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return False
    meta = pod.get("metadata", {})
    grace = meta.get("deletionGracePeriodSeconds")
    if meta.get("deletionTimestamp") and grace is not None:
        return now <= _timestamp(meta["deletionTimestamp"]) + int(grace)
    return True


def pod_usage(pod: Obj, now: float) -> Usage:
    """`PodUsageFunc`: `count/pods` always; compute resources while the pod is charged."""
    result: Usage = {"count/pods": ONE}
    if not charged(pod, now):
        return result
    spec = pod.get("spec") or {}
    return _add(result, _compute_usage(_aggregate(spec, 0), _aggregate(spec, 1)))


# Evaluators: which quota names each resource's objects consume.

_POD_NAMES = frozenset({"pods", "count/pods", "cpu", "memory", "ephemeral-storage",
                        "requests.cpu", "requests.memory", "requests.ephemeral-storage",
                        "limits.cpu", "limits.memory", "limits.ephemeral-storage"})
# Quota on cpu or memory makes every container state it ("it was a mistake", pods.go).
_MUST_SPECIFY = frozenset({"cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu",
                           "limits.memory"})
_LEGACY_COUNTS = {"configmaps": "configmaps", "secrets": "secrets",
                  "resourcequotas": "resourcequotas"}
# Object kinds a real cluster counts but this one does not serve: always zero here.
_ABSENT = frozenset({"services", "services.loadbalancers", "services.nodeports",
                     "persistentvolumeclaims", "requests.storage", "replicationcontrollers"})
IGNORED = frozenset({"events"})  # the admission plugin and controller ignore events


def matching_names(resource: str, names: Iterable[str]) -> list[str]:
    """`MatchingResources`: the quota names among `names` this resource's objects consume."""
    if resource == "pods":
        return sorted(n for n in names if n in _POD_NAMES or n.startswith(
            ("hugepages-", "requests.hugepages-")) or (n.startswith("requests.")
                                                        and _is_extended(n[9:])))
    own = {f"count/{resource}", _LEGACY_COUNTS.get(resource, f"count/{resource}")}
    return sorted(n for n in names if n in own)


def object_usage(resource: str, obj: Obj, now: float) -> Usage:
    """What one object consumes."""
    if resource == "pods":
        return pod_usage(obj, now)
    return dict.fromkeys(matching_names(resource, [f"count/{resource}",
                                                   _LEGACY_COUNTS.get(resource, "")]), ONE)


def _scope_matches(requirement: Mapping[str, Any], pod: Obj) -> bool:
    """`podMatchesScopeFunc` for one scope selector requirement."""
    spec: Obj = pod.get("spec") or {}
    scope = str(requirement.get("scopeName", ""))
    if scope in ("Terminating", "NotTerminating"):
        deadline = spec.get("activeDeadlineSeconds")
        terminating = isinstance(deadline, int) and deadline >= 0
        return terminating == (scope == "Terminating")
    if scope in ("BestEffort", "NotBestEffort"):
        return (qos_class(spec) == "BestEffort") == (scope == "BestEffort")
    if scope == "PriorityClass":
        value = spec.get("priorityClassName") or ""
        operator = requirement.get("operator")
        values = requirement.get("values") or []
        return {"Exists": bool(value), "DoesNotExist": not value,
                "In": bool(value) and value in values,
                "NotIn": not value or value not in values}.get(str(operator), False)
    if scope == "CrossNamespacePodAffinity":
        affinity = spec.get("affinity") or {}
        terms = [t.get("podAffinityTerm", t) for kind in ("podAffinity", "podAntiAffinity")
                 for key in ("requiredDuringSchedulingIgnoredDuringExecution",
                             "preferredDuringSchedulingIgnoredDuringExecution")
                 for t in (affinity.get(kind) or {}).get(key) or []]
        return any(t.get("namespaces") or t.get("namespaceSelector") is not None for t in terms)
    return False


def matches_scopes(resource: str, quota: Obj, obj: Obj) -> bool:
    """Whether an object falls under a quota's scopes (no scopes: every object does)."""
    spec = quota.get("spec") or {}
    requirements = [{"scopeName": s, "operator": "Exists"} for s in spec.get("scopes") or []]
    requirements += (spec.get("scopeSelector") or {}).get("matchExpressions") or []
    if not requirements:
        return True
    # Only pods have scopes; an object count evaluator matches no scoped quota.
    return resource == "pods" and all(_scope_matches(r, obj) for r in requirements)


def _hard(quota: Obj) -> Usage:
    return _parse_list((quota.get("status") or {}).get("hard")
                       or (quota.get("spec") or {}).get("hard"))


def used(quota: Obj, objects: Lister, now: float, served: Iterable[str]) -> Usage:
    """The quota controller's `status.used`: usage of the namespace's objects it covers.

    `objects(resource)` lists the namespace's objects of a resource; `served` names the
    resources this cluster serves.
    """
    hard = _hard(quota)
    total: Usage = {}
    for resource in served:
        names = matching_names(resource, hard)
        if resource in IGNORED or not names:
            continue
        stats: Usage = dict.fromkeys(names, ZERO)
        for obj in objects(resource):
            if matches_scopes(resource, quota, obj):
                _add(stats, object_usage(resource, obj, now))
        _add(total, stats)
    for name in hard:
        if name in _ABSENT or (name.startswith("count/") and name not in total):
            total.setdefault(name, ZERO)
    return {name: quantity for name, quantity in total.items() if name in hard}


def status(quota: Obj, objects: Lister, now: float, served: Iterable[str]) -> Obj:
    """The quota's `status`: `hard` mirrors `spec.hard`, `used` as the controller counts."""
    hard = dict((quota.get("spec") or {}).get("hard") or {})
    mirrored = {**quota, "status": {"hard": hard}}
    usage = used(mirrored, objects, now, served)
    return {"hard": hard, "used": {name: str(q) for name, q in sorted(usage.items())}}


def _pretty(usage: Mapping[str, Quantity]) -> str:
    """`prettyPrint`: `name=value` pairs sorted by name, joined by commas."""
    return ",".join(f"{name}={usage[name]}" for name in sorted(usage))


def _forbidden(resource: str, name: str, message: str) -> ApiError:
    return ApiError(403, "Forbidden", f'{resource} "{name}" is forbidden: {message}',
                    {"name": name, "kind": resource})


def _missing(required: set[str], pod: Obj) -> str | None:
    """`Constraints`: the `must specify` text for containers lacking a quota'd resource."""
    spec = pod.get("spec") or {}
    missing: dict[str, set[str]] = {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        requests, limits = _container_resources(container)
        for name in required - set(_compute_usage(requests, limits)):
            missing.setdefault(name, set()).add(str(container.get("name", "")))
    if not missing:
        return None
    return "must specify " + "; ".join(f"{name} for: {','.join(sorted(missing[name]))}"
                                       for name in sorted(missing))


def admit(resource: str, obj: Obj, quotas: Iterable[Obj], used_of: Callable[[Obj], Usage],
          now: float) -> None:
    """The ResourceQuota admission plugin on create (`CheckRequest`).

    `quotas` are the namespace's quotas in the order they are checked; `used_of` gives
    a quota's current usage (its `status.used`).

    Raises:
        ApiError: 403 Forbidden with the API server's "failed quota" or "exceeded quota"
            message.
    """
    if resource in IGNORED:
        return
    meta = obj.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName") or "Unknown"
    interesting = []
    for quota in quotas:
        hard = _hard(quota)
        restricted = matching_names(resource, hard)
        if not restricted or not matches_scopes(resource, quota, obj):
            continue
        if resource == "pods":
            problem = _missing(set(restricted) & _MUST_SPECIFY, obj)
            if problem:
                raise _forbidden(resource, name,
                                 f"failed quota: {quota['metadata']['name']}: {problem}")
        interesting.append((quota, hard))
    delta = {k: q for k, q in object_usage(resource, obj, now).items() if q.value != 0}
    if not delta:
        return
    for quota, hard in interesting:
        requested = {k: q for k, q in delta.items() if k in hard}
        current = used_of(quota)
        after = _add(dict(current), requested)
        exceeded = [k for k in requested if after[k].value > hard[k].value]
        if exceeded:
            raise _forbidden(resource, name, "exceeded quota: {}, requested: {}, used: {}, "
                             "limited: {}".format(
                                 quota["metadata"]["name"],
                                 _pretty({k: requested[k] for k in exceeded}),
                                 _pretty({k: current[k] for k in exceeded if k in current}),
                                 _pretty({k: hard[k] for k in exceeded})))


_INTEGER_NAMES = frozenset({"pods", "resourcequotas", "services", "replicationcontrollers",
                            "secrets", "configmaps", "persistentvolumeclaims",
                            "services.nodeports", "services.loadbalancers"})


def prepare(quota: Obj) -> None:
    """Validate `spec.hard` and store its quantities in canonical form.

    Raises:
        ApiError: 400 for text that is not a quantity (the decoder refuses it), 422 for
            negative values or fractions of countable names (ValidateResourceQuota).
    """
    spec = quota.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise ApiError(400, "BadRequest", "ResourceQuota in version \"v1\" cannot be handled "
                       "as a ResourceQuota: spec must be an object")
    hard = spec.get("hard") or {}
    name = (quota.get("metadata") or {}).get("name", "")
    causes: list[tuple[str, str]] = []
    stored: dict[str, str] = {}
    for key, raw in sorted(hard.items()):
        try:
            quantity = Quantity.parse(raw)
        except SelectorError as error:
            raise ApiError(400, "BadRequest", "ResourceQuota in version \"v1\" cannot be "
                           "handled as a ResourceQuota: quantities must match the regular "
                           "expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'") \
                from error
        stored[key] = str(quantity)
        if quantity.value < 0:
            causes.append((f"spec.hard[{key}]",
                           f'Invalid value: "{quantity}": must be greater than or equal to 0'))
        if (key in _INTEGER_NAMES or key.startswith("count/")) \
                and quantity.value != quantity.value.to_integral_value():
            causes.append((f"spec.hard[{key}]", f'Invalid value: "{quantity}": must be an '
                           "integer"))
    if causes:
        text = ", ".join(f"{f}: {m}" for f, m in causes)  # an aggregate's "[a, b]"
        raise ApiError(422, "Invalid", f'ResourceQuota "{name}" is invalid: '
                       + (f"[{text}]" if len(causes) > 1 else text),
                       {"name": name, "kind": "ResourceQuota",
                        "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f}
                                   for f, m in causes]})
    if hard:
        spec["hard"] = stored
