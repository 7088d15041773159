"""ColoredMNIST as image folders: read back through ``image_folder`` with the toolkit's
unnormalized preprocessing, every split equals the experiment's arrays exactly."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_theory.cli import main
from tracer_theory.deep.data.export import SPLITS, write_colored_mnist
from tracer_theory.deep.data.folders import image_folder
from tracer_theory.deep.data.images import UNNORMALIZED, Preprocessing
from tracer_theory.deep.data.prompts import DIGIT_WORDS
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.errors import InputError


def test_every_split_reads_back_as_the_experiments_arrays(tmp_path):
    written = write_colored_mnist(tmp_path, quick=True)
    assert set(written) == set(SPLITS)
    data = ExperimentData(None, "toy", True)
    see = Preprocessing(28, **UNNORMALIZED)
    for split, array, labels in (("gray_test", data.gray_test, data.test_labels),
                                 ("test_flipped", data.color_test[0.05], data.test_labels),
                                 ("train", data.color_train, data.train_labels)):
        images = image_folder(written[split])
        assert images.classes == DIGIT_WORDS
        order = np.argsort(labels, kind="stable")  # folders list class by class, by index
        assert images.labels == tuple(labels[order])
        got = np.stack([see(p) for p in images.paths])
        np.testing.assert_array_equal(got, array[order])
    with pytest.raises(InputError, match=r"already holds .*overwrite=True \(--overwrite\)"):
        write_colored_mnist(tmp_path, quick=True)


def test_the_command_writes_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["export-mnist", "--out", str(tmp_path / "d"), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "gray_test     proxy       200 images" in out
    assert main(["export-mnist", "--out", str(tmp_path / "d"), "--quick"]) == 3
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export-mnist", "--out", str(tmp_path / "d"), "--mnist",
                 str(tmp_path / "none")]) == 3
    assert "--mnist" in capsys.readouterr().err
