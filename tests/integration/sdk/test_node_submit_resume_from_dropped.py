"""The Node client's submitJob and submitSweep against a daemon that dropped resume_from (one
older than the field): as the Python SDK's submit, the job or sweep it made, which would train
from scratch, is cancelled and the submit fails UNIMPLEMENTED saying so; where the cancel fails,
the error names what it left running and how to cancel it."""

from __future__ import annotations

import json

from tessera.events import JobState
from tests.integration.sdk.test_node_client import node_json, node_ready, small_spec, table

__all__ = ["node_ready", "table"]

SAID = "UNIMPLEMENTED: this tesserad does not know resume_from (older than the client); upgrade it. "


def test_a_job_whose_daemon_dropped_resume_from_is_cancelled_and_unimplemented(
    node_ready, daemon, client, table
):
    spec = {**small_spec(table), "epochs": 500}
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const spec = {json.dumps(spec)};
          const dropped = await client.submitJob(spec);
          const sent = {{ ...spec, resume_from: 'job-elsewhere' }};
          const said = [];
          for (const answer of [dropped, {{ job_id: 'job-left', spec: {{ resume_from: '' }} }}]) {{
            try {{
              await client.answeredJob(sent, answer);
            }} catch (err) {{
              said.push(`${{err.name}} ${{err.code}}: ${{err.message}}`);
            }}
          }}
          const alone = {{ ...sent, resume_weights_only: true }};
          const kept = await client.answeredJob(alone, {{ job_id: 'job-kept', spec: {{ resume_from: 'job-elsewhere' }} }});
          console.log(JSON.stringify({{ job: dropped.job_id, said, kept: kept.job_id }}));
          client.close();
        }})();
        """,
        daemon.target,
    )
    job = found["job"]
    assert found["said"][0] == (
        f"TesseraError UNIMPLEMENTED: {SAID}Its job {job} would have trained from scratch, and is cancelled"
    )
    assert found["said"][1].startswith(
        f"TesseraError UNIMPLEMENTED: {SAID}Its job job-left trains from scratch and could not be "
        "cancelled (NOT_FOUND: "
    ), found["said"][1]
    assert found["said"][1].endswith(
        "; cancel it: client.cancelJob('job-left'), or tessera jobs cancel job-left"
    ), found["said"][1]
    assert found["kept"] == "job-kept"
    assert client.training.job(job).wait(check=False).state == JobState.CANCELLED


def test_a_sweep_whose_daemon_dropped_its_base_resume_from_is_cancelled_and_unimplemented(node_ready, daemon):
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          const sent = { base: { experiment: 'e', resume_from: 'job-elsewhere' } };
          let said = '';
          try {
            await client.answeredSweep(sent, { sweep_id: 'sweep-left', spec: { base: { resume_from: '' } } });
          } catch (err) {
            said = `${err.code}: ${err.message}`;
          }
          const kept = await client.answeredSweep(sent, { sweep_id: 'sweep-kept', spec: sent });
          console.log(JSON.stringify({ said, kept: kept.sweep_id }));
          client.close();
        })();
        """,
        daemon.target,
    )
    assert found["said"].startswith(
        f"UNIMPLEMENTED: {SAID}Its sweep sweep-left trains from scratch and could not be cancelled (NOT_FOUND: "
    ), found["said"]
    assert found["said"].endswith(
        "; cancel it: client.cancelSweep('sweep-left'), or tessera sweeps cancel sweep-left"
    ), found["said"]
    assert found["kept"] == "sweep-kept"


def test_a_full_resume_whose_daemon_started_from_the_weights_alone_is_cancelled_and_unimplemented(
    node_ready, daemon, client, table
):
    # A daemon from before the full resume keeps resume_from, but its job's run records no
    # resume_from.mode: its answer, for a job whose run has no mode.
    spec = {**small_spec(table), "epochs": 500}
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const made = await client.submitJob({json.dumps(spec)});
          const sent = {{ ...{json.dumps(spec)}, resume_from: 'job-elsewhere' }};
          const answer = {{ ...made, spec: {{ ...made.spec, resume_from: 'job-elsewhere' }} }};
          let said = '';
          try {{
            await client.answeredJob(sent, answer);
          }} catch (err) {{
            said = `${{err.code}} ${{err.message}}`;
          }}
          console.log(JSON.stringify({{ job: made.job_id, said }}));
          client.close();
        }})();
        """,
        daemon.target,
    )
    job = found["job"]
    assert found["said"] == (
        "UNIMPLEMENTED UNIMPLEMENTED: this tesserad starts a resume_from job from the checkpoint's weights alone, not going "
        "on in full (older than the client); upgrade it, or set resume_weights_only = true for that start. "
        f"Its job {job} would have trained from the weights alone, and is cancelled"
    )
    assert client.training.job(job).wait(check=False).state == JobState.CANCELLED
