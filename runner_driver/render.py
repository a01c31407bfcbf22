"""`runner-driver render`: the manifests a job would get, printed offline.

Operators try a template, a patch or a cap before they deploy it: this builds the
job's objects exactly as `prepare` would (the same layers of `podspec`) for the job
the current environment describes (`CUSTOM_ENV_*` and `JOB_RESPONSE_FILE`, as
gitlab-runner sets them), or for a built-in sample job when there is none, and prints
them as YAML. It must not reach a cluster, and it must never print a secret value:
Secrets show their keys with redacted values, and every known secret of the job is
masked in the whole output.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import yaml

from .jobrecord import valid_nonce
from .logs import Redactor
from .podspec import PodPlan, plan
from .runner_env import RESPONSE_KEY, JobContext, new_nonce
from .settings import Settings

SAMPLE_JOB = JobContext(job_id="1", project_id="1", timeout_seconds=None, nonce="",
                        tmpdir="", pipeline_id="1", project_path="group/project")


def job_for(environ: Mapping[str, str]) -> tuple[JobContext, str]:
    """The job the environment describes, else the sample job; and which it is.

    Raises:
        ConfigError, JobFailed: as `JobContext.from_env`, naming the variable.
    """
    if environ.get(RESPONSE_KEY):
        job, source = JobContext.from_env(environ), "the job in this environment"
    else:
        job, source = SAMPLE_JOB, f"a sample job ({RESPONSE_KEY} is not set)"
    if not valid_nonce(job.nonce):
        job = replace(job, nonce=new_nonce())
    return job, source


def build(settings: Settings, environ: Mapping[str, str],
          operator_registries: tuple[tuple[str, dict[str, Any]], ...] = (),
          operator_ca: str | None = None) -> tuple[JobContext, str, PodPlan]:
    """The job (see `job_for`), which it is, and the objects `prepare` builds for it.

    Without `operator_ca` (the PEM prepare reads from `[tls] ca_secret` or
    `ca_configmap`), a stand-in gives the pod the CA layer prepare adds. `check` passes
    what it read from the cluster.

    Raises:
        ConfigError, JobFailed: as `render`.
    """
    job, source = job_for(environ)
    if operator_ca is None:
        # The operator's CA Secret or ConfigMap is not read without a cluster; a stand-in
        # gives the pod the CA layer prepare adds (its value is redacted like any other).
        ca_from = settings.tls.ca_secret or settings.tls.ca_configmap
        operator_ca = f"(the CA in {ca_from})" if ca_from else ""
    return job, source, plan(settings, job, operator_registries, operator_ca)


def render(settings: Settings, environ: Mapping[str, str]) -> str:
    """The job's manifests as YAML documents, with a comment header saying what they are.

    Raises:
        ConfigError: the settings, template or patch are at fault (naming the key or path).
        JobFailed: one of the job's variables is at fault (naming it).
    """
    job, source, built = build(settings, environ)
    ca_from = settings.tls.ca_secret or settings.tls.ca_configmap
    header = [f"# runner-driver render: the objects `prepare` creates for {source}",
              f"# settings: {settings.source}", f"# {built.registries}"]
    unread = [f"the operator's registry secrets {', '.join(settings.registry.secrets)}"
              ] if settings.registry.secrets else []
    unread += [f"the CA in {ca_from}"] if ca_from else []
    if unread:
        header.append(f"# (not read here: {' and '.join(unread)}, which prepare merges in)")
    header += [f"# {note}" for note in built.notes]
    manifests = [built.pod] if built.secret is None else [built.secret, built.pod]
    documents = [redacted(manifest) for manifest in manifests]
    text = "\n".join(header) + "\n" + yaml.dump_all(
        documents, Dumper=_Dumper, sort_keys=False, explicit_start=True, width=100)
    return Redactor(job.secrets).mask(text)


class _Dumper(yaml.SafeDumper):
    """Safe YAML, with the in-pod shell programs as readable literal blocks."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not value.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def redacted(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with the values of a Secret replaced by their size; others unchanged."""
    if manifest.get("kind") != "Secret":
        return manifest
    shown = copy.deepcopy(manifest)
    for field in ("data", "stringData"):
        if isinstance(shown.get(field), dict):
            shown[field] = {key: f"<redacted: {len(str(value))} characters>"
                            for key, value in shown[field].items()}
    return shown
