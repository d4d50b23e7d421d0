"""A sweep trial's params as Optuna gives them: each value typed as the JobSpec field its path
names (float, int, bool, str), from the text the daemon keeps (`info.params`)."""

from __future__ import annotations

from tessera.sweeps import SweepTrial
from tessera.v1 import training_pb2 as pb


def test_each_value_has_the_type_of_the_field_its_path_names():
    trial = SweepTrial.from_proto(
        pb.SweepTrial(
            params={
                "optimizer.lr": "0.0031560526824017526",
                "batch_size": "16",
                "optimizer.nesterov": "true",
                "optimizer.name": "adamw",
                "architecture.mlp.hidden_sizes": "[8, 8]",
                "architecture.family": "cnn4d",
                "epochs": "3.0",
            }
        )
    )
    assert trial.params == {
        "optimizer.lr": 0.0031560526824017526,
        "batch_size": 16,
        "optimizer.nesterov": True,
        "optimizer.name": "adamw",
        "architecture.mlp.hidden_sizes": "[8, 8]",
        "architecture.family": "cnn4d",
        "epochs": 3,
    }
    assert type(trial.params["batch_size"]) is int and type(trial.params["epochs"]) is int
    assert trial.info.params["optimizer.lr"] == "0.0031560526824017526"


def test_text_that_is_not_its_field_s_type_stays_text():
    trial = SweepTrial.from_proto(pb.SweepTrial(params={"batch_size": "many", "no.such.path": "1"}))
    assert trial.params == {"batch_size": "many", "no.such.path": "1"}
