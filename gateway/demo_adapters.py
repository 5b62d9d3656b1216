"""The demo's providers beside the FHIR REST ones: one for each other adapter, with its simulator, so a
newcomer sees orders move through all four. HL7 v2 over MLLP (status back to the gateway's MLLP
listener), a CSV file drop in the demo's data folder, and a provider that pulls its orders."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from adapters.csv_drop.simulator import FolderSimulatorServer
from adapters.hl7v2_mllp.simulator import MllpSimulatorServer
from adapters.pull.simulator import PullSimulator, PullSimulatorConfig
from auth.assertion import load_private_key
from gateway.clock import system_clock
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import add_provider, list_providers, update_provider

MLLP_PROVIDER = ("VNHLS", "Demo HL7 Homecare (HL7 v2 over MLLP)", "hl7v2-mllp")
FILE_PROVIDER = ("VNFIL", "Demo File Homecare (CSV file drop)", "csv-drop")
PULL_PROVIDER = ("VNPUL", "Demo Pull Homecare (pulls its orders)", "pull")
ADAPTER_PROVIDERS = (MLLP_PROVIDER, FILE_PROVIDER, PULL_PROVIDER)

# Who registers a provider client for the demo: (client id, ODS code) -> the private key file.
RegisterClient = Callable[[str, str], Path]


def demo_mllp_listen() -> None:
    """The gateway's MLLP listener on a free loopback port, unless the environment names one."""
    if "HOMECARE_MLLP_LISTEN" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["HOMECARE_MLLP_LISTEN"] = f"127.0.0.1:{probe.getsockname()[1]}"


class AdapterProviders:
    """The three providers and their simulators, from registration to `stop`."""

    def __init__(
        self, database: Database, settings: Settings, register_client: RegisterClient, *, pace: float = 1.0
    ) -> None:
        self._pace = pace  # the simulators' waits are multiplied by it (a test runs the demo faster)
        self._database = database
        self._settings = settings
        self._register_client = register_client
        self._mllp: MllpSimulatorServer | None = None
        self._files: FolderSimulatorServer | None = None
        self._pull: PullSimulator | None = None

    @property
    def ods_codes(self) -> list[str]:
        return [ods for ods, _, _ in ADAPTER_PROVIDERS]

    def start(self) -> None:
        """The MLLP and file providers (they need nothing of the running gateway), all three registered."""
        listener = self._settings.mllp_listener_options()
        assert listener is not None, "demo_mllp_listen() sets HOMECARE_MLLP_LISTEN"
        self._mllp = MllpSimulatorServer(
            MLLP_PROVIDER[0],
            seed=2026,
            step_delay_seconds=3.5 * self._pace,
            # Slow to accept (a minute and more): the performance page's time to acceptance shows it.
            step_delays={"accepted": 65.0 * self._pace},
            status_port=int(listener["port"]),
        )
        self._mllp.start()
        self._files = FolderSimulatorServer(
            # Absolute: the provider is registered with these folders, whatever the working directory.
            (self._settings.data_dir / "demo-files" / FILE_PROVIDER[0]).resolve(),
            FILE_PROVIDER[0],
            seed=2026,
            step_delay_seconds=4.0 * self._pace,
            poll_interval_seconds=1.0,
        )
        self._files.start()
        self._register(
            {
                MLLP_PROVIDER[0]: {
                    "host": "127.0.0.1",
                    "port": self._mllp.port,
                    "inbound_allowed_addresses": "127.0.0.1",
                },
                FILE_PROVIDER[0]: self._files.local_settings(poll_interval_seconds=1.0),
                PULL_PROVIDER[0]: {"lease_seconds": 60, "unpulled_alert_seconds": 3600},
            }
        )

    def _register(self, settings: dict[str, dict[str, object]]) -> None:
        with self._database.write() as session:
            known = {provider.ods_code for provider in list_providers(session)}
            for ods, name, adapter in ADAPTER_PROVIDERS:
                if ods in known:
                    update_provider(
                        session,
                        ods,
                        now=system_clock(),
                        adapter=adapter,
                        settings=settings[ods],
                        enabled=True,
                    )
                else:
                    add_provider(
                        session,
                        ods_code=ods,
                        name=name,
                        adapter=adapter,
                        settings=settings[ods],
                        now=system_clock(),
                    )

    def start_pull(self, base_url: str, algorithm: str) -> None:
        """The pulling provider, once the gateway answers: it logs in with its own signed JWT."""
        ods = PULL_PROVIDER[0]
        client_id = f"demo-provider-{ods.lower()}"
        key = load_private_key(self._register_client(client_id, ods))
        config = PullSimulatorConfig(
            ods=ods,
            seed=2026,
            gateway_url=base_url,
            token_audience=self._settings.token_url,
            client_id=client_id,
            kid=key.thumbprint(),
            algorithm=algorithm,
            poll_interval_seconds=2.0,
            step_delay_seconds=3.0 * self._pace,
        )
        self._pull = PullSimulator(config, key=key)
        self._pull.start()

    def guide(self) -> str:
        """What the demo shows of them, for its guide."""
        listener = self._settings.mllp_listen
        folder = self._files.root if self._files is not None else "-"
        return (
            f"  {MLLP_PROVIDER[0]} (hl7v2-mllp)    RDE^O11 to 127.0.0.1:{self._mllp.port if self._mllp else '-'}, "
            f"status back to the gateway's MLLP listener {listener}\n"
            f"  {FILE_PROVIDER[0]} (csv-drop)      order and status files in {folder}/orders and {folder}/status\n"
            f"  {PULL_PROVIDER[0]} (pull)          polls GET /fhir/Task?owner={PULL_PROVIDER[0]}&business-status=queued"
        )

    def stop(self) -> None:
        for simulator in (self._pull, self._mllp, self._files):
            if simulator is not None:
                simulator.stop()
