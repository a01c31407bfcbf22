"""What a container sees of its pod: volumes as files, and its environment.

The kubelet materialises secret, configMap, downwardAPI and projected volumes as
files with their modes, and builds each container's environment from the image,
`envFrom` and `env` (with `$(VAR)` expansion and the downward API). Missing sources
produce the kubelet's own messages, which drivers show to users. This module reads
the store but never writes it, and starts no processes.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

from . import rbac
from .selectors import parse_quantity
from .store import Obj, Store


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion in env values, command and args (`$$` escapes)."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)", replace, text)


def materialise(store: Store, pod: Obj, directory: Path, volume: Obj) -> str | None:
    """Write one volume's files under `directory`; return the kubelet's error, if any.

    emptyDir volumes become empty shared directories; secret, configMap, downwardAPI
    and projected volumes become files with their modes. A missing source gives the
    `MountVolume.SetUp failed` message the kubelet records as a FailedMount event.
    """
    name = volume["name"]
    target = directory / name
    namespace = pod["metadata"]["namespace"]
    prefix = f'MountVolume.SetUp failed for volume "{name}" : '

    def files_from(kind: str, source: Obj, mode_default: int) -> dict[str, tuple[bytes, int]]:
        resource = "secrets" if kind == "secret" else "configmaps"
        obj_name = source.get("secretName") if kind == "secret" else source.get("name")
        obj = store.find(resource, namespace, obj_name or "")
        if obj is None:
            if source.get("optional"):
                return {}
            raise LookupError(f'{kind} "{obj_name}" not found')
        data: dict[str, bytes] = {}
        if kind == "secret":
            for key, value in (obj.get("data") or {}).items():
                data[key] = base64.b64decode(value)
            for key, value in (obj.get("stringData") or {}).items():
                data[key] = value.encode()
        else:
            for key, value in (obj.get("data") or {}).items():
                data[key] = value.encode()
            for key, value in (obj.get("binaryData") or {}).items():
                data[key] = base64.b64decode(value)
        mode = int(source.get("defaultMode", mode_default))
        items = source.get("items")
        if not items:
            return {k: (v, mode) for k, v in data.items()}
        result = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise LookupError(f'references non-existent {kind} key: {item["key"]}')
            result[item.get("path", item["key"])] = (data[item["key"]],
                                                     int(item.get("mode", mode)))
        return result

    try:
        files: dict[str, tuple[bytes, int]] | None = None
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)
            return None
        if "secret" in volume:
            files = files_from("secret", volume["secret"], 0o644)
        elif "configMap" in volume:
            files = files_from("configMap", volume["configMap"], 0o644)
        elif "downwardAPI" in volume:
            files = {i["path"]: (field_ref(pod, i.get("fieldRef") or {}).encode(),
                                 int(i.get("mode", volume["downwardAPI"].get(
                                     "defaultMode", 0o644))))
                     for i in volume["downwardAPI"].get("items") or []}
        elif "projected" in volume:
            files = {}
            mode = int(volume["projected"].get("defaultMode", 0o644))
            for source in volume["projected"].get("sources") or []:
                if "secret" in source:
                    files.update(files_from("secret", {**source["secret"],
                                                       "secretName": source["secret"].get("name"),
                                                       "defaultMode": mode}, mode))
                elif "configMap" in source:
                    files.update(files_from("configMap", {**source["configMap"],
                                                          "defaultMode": mode}, mode))
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"].get("items") or []:
                        files[item["path"]] = (field_ref(
                            pod, item.get("fieldRef") or {}).encode(), mode)
                elif "serviceAccountToken" in source:
                    token = rbac.service_account_token(
                        namespace, str(pod["spec"].get("serviceAccountName")))
                    files[source["serviceAccountToken"].get("path", "token")] = (
                        token.encode(), mode)
        else:
            kinds = ", ".join(k for k in volume if k != "name")
            return prefix + f"volume type {kinds} is not supported by the emulated cluster"
    except LookupError as error:
        return prefix + str(error)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path, (data, mode) in files.items():
        file_path = target / path
        file_path.parent.mkdir(parents=True, exist_ok=True)
        file_path.write_bytes(data)
        file_path.chmod(mode)
    return None


def field_ref(pod: Obj, ref: Obj) -> str:
    """The value of a downward-API `fieldRef` for a pod."""
    path = ref.get("fieldPath", "")
    meta = pod["metadata"]
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
              "metadata.uid": meta["uid"], "spec.nodeName": pod["spec"].get("nodeName", ""),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "status.hostIP": "127.0.0.1", "status.podIP": pod["status"].get("podIP", "")}
    if path in simple:
        return str(simple[path])
    match = re.match(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    return ""


def resolve_env(store: Store, pod: Obj, container: Obj, base: dict[str, str],
                node_allocatable: dict[str, str]) -> dict[str, str]:
    """A container's environment: the image's, then envFrom, then env, as the kubelet builds it.

    Raises:
        LookupError: a referenced secret, configmap or key is missing (the message is
            the kubelet's CreateContainerConfigError text).
    """
    env = dict(base)
    namespace = pod["metadata"]["namespace"]
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, resource in (("secretRef", "secrets"), ("configMapRef", "configmaps")):
            if kind not in source:
                continue
            ref = source[kind]
            obj = store.find(resource, namespace, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise LookupError(f'{resource[:-1] if resource == "secrets" else "configmap"} '
                                  f'"{ref.get("name")}" not found')
            for key, value in (obj.get("data") or {}).items():
                env[prefix + key] = (base64.b64decode(value).decode(errors="replace")
                                     if resource == "secrets" else value)
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item or "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"])
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            resources = container.get("resources") or {}
            kind, _, rname = ref.get("resource", "").partition(".")
            value = (resources.get(kind) or {}).get(rname)
            divisor = parse_quantity(ref.get("divisor", "1"))
            if value is None:
                value = node_allocatable.get(rname, "0")
            env[name] = str(int(-(-parse_quantity(value) // divisor)))
        else:
            for kind, resource, label in (("secretKeyRef", "secrets", "secret"),
                                          ("configMapKeyRef", "configmaps", "configmap")):
                if kind not in source:
                    continue
                ref = source[kind]
                obj = store.find(resource, namespace, ref.get("name", ""))
                data = (obj or {}).get("data") or {}
                if obj is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        break
                    if obj is None:
                        raise LookupError(f'{label} "{ref.get("name")}" not found')
                    kind_name = "Secret" if label == "secret" else "ConfigMap"
                    raise LookupError(f"couldn't find key {ref.get('key')} in {kind_name} "
                                      f"{namespace}/{ref.get('name')}")
                raw = data[ref["key"]]
                env[name] = (base64.b64decode(raw).decode(errors="replace")
                             if resource == "secrets" else raw)
    return env
