"""The Node client's datasets, alias and serving calls (clients/node/tessera.js) against a real
daemon: what `tessera-node datasets`, `models alias` and `load` run on."""

from __future__ import annotations

import json

import numpy as np

from tests.integration.sdk.test_node_client import node_json, node_ready

__all__ = ["node_ready"]


def test_node_client_pushes_a_dataset_with_index_splits_and_reads_it_back(
    node_ready, daemon, client, tmp_path
):
    np.savez(tmp_path / "table.npz", x=np.arange(24, dtype=np.float32).reshape(6, 4))
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const pushed = await client.pushDataset('table', {json.dumps(str(tmp_path / "table.npz"))}, {{
            splits: {{ train: [0, 1, 2, 3], val: [4, 5] }},
            tags: {{ source: 'node' }},
            chunkSize: 7,
          }});
          const refused = [];
          for (const [file, options] of [
            ['table.csv', {{}}],
            [{json.dumps(str(tmp_path / "table.npz"))}, {{ splits: {{ train: 0.5, val: [1] }} }}],
          ]) {{
            try {{
              await client.pushDataset('other', file, options);
            }} catch (err) {{
              refused.push(`${{err.name}}: ${{err.message}}`);
            }}
          }}
          const shown = await client.getDatasetVersion('table:1');
          const listed = await client.listDatasets('ta');
          console.log(JSON.stringify({{
            pushed: [pushed.name, pushed.version, pushed.splits.map((s) => [s.name, s.count])],
            shown: shown.arrays.map((a) => [a.name, a.shape]),
            listed: listed.map((d) => d.name),
            refused,
          }}));
          client.close();
        }})();
        """,
        daemon.target,
    )
    assert found["pushed"] == ["table", 1, [["train", 4], ["val", 2]]]
    assert found["shown"] == [["x", [6, 4]]] and found["listed"] == ["table"]
    assert found["refused"] == [
        "RangeError: table.csv: datasets are .npz or .npy files",
        "RangeError: splits: give every split a fraction or every split its indices, not both",
    ]
    assert client.datasets.version("table").tags == {"source": "node"}
    assert [d.name for d in client.datasets.list()] == ["table"]


def test_node_client_moves_aliases_and_loads_versions(node_ready, daemon, client, onnx_file):
    client.models.push("affine", onnx_file)
    client.models.push("affine", onnx_file, description="second")
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          const alias = await client.setAlias('affine', 'production', 1, { expectedVersion: 0 });
          let stale;
          try {
            await client.setAlias('affine', 'production', 2, { expectedVersion: 2 });
          } catch (err) {
            stale = err.code;
          }
          const loaded = await client.loadModel('affine', { alias: 'production', config: { runtime: 'onnx', instances: 1 } });
          const serving = await client.listLoaded('affine');
          const unloaded = await client.unloadModel('affine', { version: 1 });
          await client.deleteAlias('affine', 'production');
          // saveConfig: later loads that leave a field out take it; an empty config removes it.
          const batch = async (options) => (await client.loadModel('affine', { version: 2, ...options })).config.max_batch_size;
          const saved = [await batch({ config: { max_batch_size: 4 }, saveConfig: true })];
          await client.unloadModel('affine');
          saved.push(await batch({}), await batch({ config: { max_batch_size: 8 } }), await batch({ saveConfig: true }));
          await client.unloadModel('affine');
          saved.push(await batch({}));
          await client.unloadModel('affine');
          console.log(JSON.stringify({
            saved,
            alias: [alias.alias, alias.version],
            stale,
            loaded: [loaded.version, loaded.config.runtime, loaded.config.instances],
            serving: serving.map((m) => m.version),
            unloaded: unloaded.map((m) => m.version),
            left: await client.listLoaded(),
          }));
          client.close();
        })();
        """,
        daemon.target,
    )
    assert found == {
        "alias": ["production", 1],
        "stale": "FAILED_PRECONDITION",
        "loaded": [1, "RUNTIME_ONNX", 1],
        "serving": [1],
        "unloaded": [1],
        "left": [],
        "saved": [4, 4, 8, 32, 32],
    }
    assert [a.alias for a in client.models.aliases("affine")] == ["latest"]
