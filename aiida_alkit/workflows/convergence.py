"""When a campaign has converged, decided after each round's selection (plain Python; the ``campaign_convergence``
calcfunction records the decision as a node).

The rules, in order (see the module docstring of ``active_learning``):

1. with a test set and a ``target_force_rmse``: the round's potential has a test force RMSE (eV/Å) below the target;
2. the round finished an exploration *stage* (the accurate fraction reached ``accurate_fraction``, or nothing was
   left to select) before the last stage of the schedule: the campaign moves on to the next stage without labelling,
   as DP-GEN's stages do;
3. at the last stage, the fraction of explored candidates flagged accurate reaches ``accurate_fraction`` (DP-GEN's
   criterion);
4. at the last stage, nothing is left to select.

The label budget and ``max_rounds`` are checked where the labels are counted and where a round starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ['RoundDecision', 'decide_round']


@dataclass(frozen=True)
class RoundDecision:
    """What a round's selection means for the campaign.

    :param converged: the campaign stops after this round (no labels this round).
    :param stage_done: this exploration stage is learnt: no labels, the next round explores the next stage.
    :param reason: why the campaign stops (empty unless ``converged``).
    :param accurate_fraction: accurate candidates / explored candidates (0 for an empty pool).
    """

    converged: bool
    stage_done: bool
    reason: str
    accurate_fraction: float

    def as_dict(self) -> dict:
        return asdict(self)


def decide_round(
    *,
    explored: int,
    n_accurate: int,
    n_selected: int,
    round_index: int,
    stages: int,
    accurate_fraction: float,
    test_force_rmse: float | None = None,
    target_force_rmse: float | None = None,
) -> RoundDecision:
    """Apply the convergence rules (module docstring) to one round.

    :param explored: candidates in the round's pool; ``n_accurate`` of them were flagged accurate, ``n_selected`` picked.
    :param round_index: the round (1-based); ``stages``: the number of scheduled exploration stages (1 without one).
    :param test_force_rmse: the round's potential's test force RMSE (eV/Å), if it has one.
    :param target_force_rmse: the campaign's target (eV/Å), if it has one.
    """
    accurate = n_accurate / max(1, explored)
    stage_converged = accurate >= accurate_fraction or n_selected == 0
    if target_force_rmse is not None and test_force_rmse is not None and test_force_rmse < target_force_rmse:
        return RoundDecision(True, False, 'test-set force RMSE below the target', accurate)
    if stage_converged and round_index < stages:
        return RoundDecision(False, True, '', accurate)
    if accurate >= accurate_fraction:
        return RoundDecision(True, False, f'{accurate:.0%} of the explored candidates are accurate', accurate)
    if n_selected == 0:
        return RoundDecision(True, False, 'nothing left to select', accurate)
    return RoundDecision(False, False, '', accurate)
