"""The report says how the layers split when the pipeline does not divide them."""

from cost_models.specs import Plan
from tuner.report import stages_line


def test_embedding_and_loss_split_is_named_with_its_flags():
    plan = Plan(tp=8, pp=16, vpp=8, dp=128, global_batch_size=2048)
    line = " ".join(stages_line(plan, 126).split())
    assert "16 stages x 8 chunks of 1 slot" in line
    assert "first and last stage 7 layers, others 8" in line
    assert "--account-for-embedding-in-pipeline-split" in line


def test_uneven_split_without_interleaving_names_first_and_last():
    line = " ".join(stages_line(Plan(tp=8, pp=8, dp=256, global_batch_size=2048), 126).split())
    assert "first 15, last 15, others 16" in line and "--decoder-first" in line


def test_even_split_says_nothing():
    assert stages_line(Plan(tp=8, pp=8, vpp=2, dp=16, global_batch_size=128), 96) is None
    assert stages_line(Plan(tp=8, dp=16, global_batch_size=128), 126) is None
