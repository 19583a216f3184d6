import aion_green as aion


def add(a, b):
    return a + b


@aion.workflow
def summing(ctx, n):
    total = 0
    for i in range(n):
        total = ctx.step(add, total, i)
    return {"total": total}


def test_workflow_runs_steps_and_returns_result(make_engine):
    engine = make_engine(summing)
    handle = engine.start(summing, 10, id="sum-10")
    assert handle.result(timeout=10) == {"total": 45}
    history = engine.history("sum-10")
    assert [e.seq for e in history] == list(range(1, 13))
    assert history[0].type == "WorkflowStarted"
    assert [e.type for e in history[1:11]] == ["StepCompleted"] * 10
    assert history[-1].type == "WorkflowCompleted"
