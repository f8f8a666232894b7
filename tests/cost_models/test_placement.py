"""Where groups land: members per node follow the placement order."""

from cost_models.placement import group_ranks_per_node
from cost_models.plan_arrays import from_plans
from cost_models.specs import Plan


def k(order: str, **degrees) -> dict:
    plan = Plan(global_batch_size=degrees.get("dp", 1), order=order, **degrees)
    return {a: int(v[0]) for a, v in group_ranks_per_node(from_plans([plan]), 8).items()}


def test_tp_innermost_fills_the_node():
    got = k("tp-cp-dp-pp", tp=8, pp=4, dp=16)
    assert got["tp"] == 8 and got["dp"] == 1 and got["pp"] == 1 and got["dp_cp"] == 1


def test_data_parallel_inside_the_node_when_tp_is_small():
    got = k("tp-cp-dp-pp", tp=2, cp=2, dp=8)
    assert got["tp"] == 2 and got["cp"] == 2 and got["dp"] == 2 and got["dp_cp"] == 4


def test_pipeline_inside_pushes_data_parallel_out():
    got = k("tp-cp-pp-dp", tp=1, pp=8, dp=4)
    assert got["pp"] == 8 and got["dp"] == 1 and got["dp_cp"] == 1
