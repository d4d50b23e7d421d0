"""The Node.js client (clients/node) over TLS and mutual TLS with a token, as a service behind
a secured daemon connects: the certificates made for the test, a real daemon."""

from __future__ import annotations

import json

from tesserad.security import Role
from tests.integration.sdk.test_node_client import node_ready, run_node_script
from tests.integration.security.conftest import Pki, Tokens
from tests.integration.security.test_tls import tls_settings

__all__ = ["node_ready"]


def test_node_client_speaks_mutual_tls_with_a_token(node_ready, start_daemon, pki: Pki, tokens: Tokens):
    daemon = start_daemon(**tls_settings(pki, mutual=True), **{"security.tokens_file": str(tokens.file)})
    files = {
        name: str(path) for name, path in (("ca", pki.ca), ("cert", pki.client_cert), ("key", pki.client_key))
    }
    outcomes = run_node_script(
        f"""
        const fs = require('node:fs');
        const files = {json.dumps(files)};
        const token = {json.dumps(tokens.token[Role.TRAINER])};
        const pem = (name) => fs.readFileSync(files[name]);
        const clients = {{
          mutual: new Client(TARGET, {{ rootCert: pem('ca'), clientCert: pem('cert'), clientKey: pem('key'), token }}),
          noToken: new Client(TARGET, {{ rootCert: pem('ca'), clientCert: pem('cert'), clientKey: pem('key'), }}),
          noClientCert: new Client(TARGET, {{ rootCert: pem('ca'), token }}),
          plaintext: new Client(TARGET, {{ token }}),
        }};
        (async () => {{
          for (const [name, client] of Object.entries(clients)) {{
            try {{
              const experiment = await client.createExperiment(`over-${{name}}`);
              console.log(name, 'answered', experiment.name);
            }} catch (err) {{
              console.log(name, err.code);
            }}
            client.close();
          }}
          try {{
            new Client(TARGET, {{ rootCert: pem('ca'), clientCert: pem('cert') }});
          }} catch (err) {{
            console.log('certWithoutKey', err.name);
          }}
        }})();
        """,
        f"localhost:{daemon.daemon.port}",
        env={"TESSERA_TOKEN": ""},
    )
    assert outcomes.returncode == 0, outcomes.stderr
    assert outcomes.stdout.splitlines() == [
        "mutual answered over-mutual",
        "noToken UNAUTHENTICATED",
        "noClientCert UNAVAILABLE",
        "plaintext UNAVAILABLE",
        "certWithoutKey TypeError",
    ]


def test_node_client_tls_true_trusts_the_system_cas(node_ready, start_daemon, pki: Pki):
    """`tls: true` checks the daemon's certificate against the system's CAs: a daemon whose CA is
    not among them is refused at once with the certificate error (not a hang, not plaintext);
    one gRPC's GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names (it stands for the system's) lets it in."""
    daemon = start_daemon(**tls_settings(pki))
    script = """
        (async () => {
          const client = new Client(TARGET, { tls: true, timeoutMs: 20000 });
          try {
            const info = await client.info();
            console.log('answered', info.version.length > 0);
          } catch (err) {
            console.log(err.code, err.details);
          }
          client.close();
        })();
        """
    target = f"localhost:{daemon.daemon.port}"
    untrusted = run_node_script(script, target, env={"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": ""})
    assert untrusted.returncode == 0, untrusted.stderr
    code, _, details = untrusted.stdout.strip().partition(" ")
    assert code == "UNAVAILABLE", untrusted.stdout
    assert "certificate" in details, details
    trusted = run_node_script(script, target, env={"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(pki.ca)})
    assert (trusted.returncode, trusted.stdout) == (0, "answered true\n"), trusted.stderr
