"""Auto-sharding: a group's layout follows its load, within a policy and a churn budget.

The pure core, in the order data flows:

* :mod:`shardkit.proxy.load` - the per-instance accumulator and the load record (data plane);
* :mod:`.load` - records of many instances merged into load windows, and per-slot estimates;
* :mod:`.policy` - a group's policy (``[groups.NAME.autoshard]``) as plain data;
* :mod:`.decide` - the decision function, built on :mod:`.plan` (the moves every policy makes);
* :mod:`shardkit.sharding.layout` - a decision's change applied to the map, deterministically;
* :mod:`.workload`, :mod:`.model`, :mod:`.simulate`, :mod:`.plot`, :mod:`.baselines` - the
  what-if simulator (``shardkit simulate``) and the policies it compares.

Control plane: nothing here is imported by the data plane. The controller that will run
:func:`.decide.decide` on a schedule, and the proxy wiring, are not built yet (docs/autoshard.md).
"""

from .decide import Decision, decide
from .load import LoadAggregator, LoadWindow
from .policy import Policy, policy_for

__all__ = ["Decision", "LoadAggregator", "LoadWindow", "Policy", "decide", "policy_for"]
