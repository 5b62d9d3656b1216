"""Credentials for running the gateway role: key pairs for two trusts and two providers, the
configuration file naming them, and the operator commands that register them at a gateway.

For this project's own gateway `homecare-conformance init-gateway --register` runs those commands
(`homecare-gateway providers add` and `clients add`) itself, as an operator would: through the
command line, never by importing the gateway."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from joserfc.jwk import ECKey

TRUST_SCOPES = (
    "system/MedicationRequest.c system/MedicationRequest.u system/MedicationRequest.rs "
    "system/Task.rs system/Subscription.crud"
)
PROVIDER_SCOPES = "system/MedicationRequest.rs system/MedicationDispense.c system/Task.rs system/Task.cu"


@dataclass(frozen=True)
class ClientSpec:
    name: str  # the table name in the configuration: trust_a, trust_b, provider, provider_b
    client_id: str
    role: str
    ods: str
    scopes: str

    def key_stem(self, folder: Path) -> Path:
        return folder / self.client_id


DEFAULT_CLIENTS = (
    ClientSpec("trust_a", "conformance-trust-a", "trust", "RCF", TRUST_SCOPES),
    ClientSpec("trust_b", "conformance-trust-b", "trust", "RCG", TRUST_SCOPES),
    ClientSpec("provider", "conformance-provider-a", "provider", "VCF01", PROVIDER_SCOPES),
    ClientSpec("provider_b", "conformance-provider-b", "provider", "VCF02", PROVIDER_SCOPES),
)


def write_key_pair(stem: Path) -> None:
    """STEM.pem (private, owner-only) and STEM.jwks.json (public); an existing pair is kept."""
    pem = stem.with_suffix(".pem")
    if pem.exists():
        return
    key = ECKey.generate_key("P-384")
    descriptor = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.as_pem(private=True))
    public = key.as_dict(private=False)
    public.update({"kid": key.thumbprint(), "use": "sig", "alg": "ES384"})
    stem.with_suffix(".jwks.json").write_text(json.dumps({"keys": [public]}, indent=2), encoding="utf-8")


def write_gateway_config(
    folder: Path, provider_listen: str, clients: tuple[ClientSpec, ...] = DEFAULT_CLIENTS
) -> Path:
    """Key pairs for every client and `conformance.toml` naming them; returns the configuration's path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The conformance suite's clients at the gateway under test (see README, Conformance suite).",
        "[gateway]",
        "# The suite plays provider VCF01's system here: register that provider's fhir-rest base URL",
        f"# as http://{provider_listen}/fhir",
        f'provider_listen = "{provider_listen}"',
        "",
    ]
    for spec in clients:
        write_key_pair(spec.key_stem(folder))
        lines += [
            f"[gateway.clients.{spec.name}]",
            f'client_id = "{spec.client_id}"',
            f'ods = "{spec.ods}"',
            f'key = "{spec.client_id}.pem"',
            "",
        ]
    path = folder / "conformance.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def registration_commands(
    folder: Path, provider_listen: str, clients: tuple[ClientSpec, ...] = DEFAULT_CLIENTS
) -> list[list[str]]:
    """The `homecare-gateway` commands that register the suite's providers and clients."""
    commands = []
    for spec in clients:
        if spec.role == "provider":
            commands.append(
                [
                    "homecare-gateway",
                    "providers",
                    "add",
                    "--ods",
                    spec.ods,
                    "--name",
                    f"Conformance suite {spec.ods}",
                    "--adapter",
                    "fhir-rest",
                    "--base-url",
                    f"http://{provider_listen}/fhir",
                ]
            )
    for spec in clients:
        commands.append(
            [
                "homecare-gateway",
                "clients",
                "add",
                "--client-id",
                spec.client_id,
                "--role",
                spec.role,
                "--ods",
                spec.ods,
                "--jwks",
                str(spec.key_stem(folder).with_suffix(".jwks.json")),
                "--scopes",
                spec.scopes,
            ]
        )
    return commands


def run_registration(commands: list[list[str]], gateway_command: str) -> list[str]:
    """Run each command; one that fails because the thing already exists is not an error. Returns
    one line per command saying what happened."""
    report = []
    for command in commands:
        argv = [gateway_command, *command[1:]]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        said = (done.stdout + done.stderr).strip().splitlines()
        last = said[-1] if said else ""
        if done.returncode == 0:
            report.append(f"ok: {shlex.join(command[:3])} {command[4]}")
        elif "already" in (done.stdout + done.stderr).lower():
            report.append(f"kept: {shlex.join(command[:3])} {command[4]} (already registered)")
            if command[1] == "providers":
                update = [
                    gateway_command,
                    "providers",
                    "update",
                    "--ods",
                    command[4],
                    "--base-url",
                    command[-1],
                    "--enable",
                ]
                subprocess.run(update, capture_output=True, text=True, check=False)  # noqa: S603
        else:
            raise RuntimeError(f"{shlex.join(argv)} failed: {last}")
    return report
