"""The reassembly vectors (the ``reassembly`` part of ``fragmentation.json``): the budget a
receiver's ``Reassembler`` holds after each fragment of the fragmented message, and the
fragment-size rule, computed by the reference
(:func:`~protocol.record_reference.reference_reassembly_charges`) and by p2ptls, which must agree
(SPEC.md section 6).
"""

from __future__ import annotations

from collections.abc import Sequence

from p2ptls._errors import ProtocolError
from p2ptls._fragments import Reassembler, ReassemblyBudget
from protocol.record_reference import (
    FRAGMENT_OVERHEAD,
    MIN_NONFINAL_FRAGMENT,
    reference_reassembly_charges,
)
from protocol.vector_inputs import Json, fragment_message
from protocol.vector_support import require

# ((record kind, announced total or None, fragment length), ...), expected outcome, description
ReassemblyCase = tuple[tuple[tuple[str, int | None, int], ...], str, str]
REASSEMBLY_CASES: tuple[ReassemblyCase, ...] = (
    (
        (("start", 503, 251),),
        "ProtocolError",
        "a non-final first fragment below the minimum",
    ),
    (
        (("start", 1000, 252), ("continue", None, 251)),
        "ProtocolError",
        "a non-final continuation below the minimum",
    ),
    (
        (("start", 503, 252), ("continue", None, 251)),
        "delivered",
        "a final fragment may be short",
    ),
    (
        (("start", 100, 100),),
        "delivered",
        "a message in one record is never kept",
    ),
)


def reassembly_vectors(sizes: Sequence[int]) -> Json:
    charges = reference_reassembly_charges(sizes)
    budget = ReassemblyBudget()
    reassembler = Reassembler(16 * 1024 * 1024, budget)
    message = fragment_message()
    offset, observed = 0, []
    for index, size in enumerate(sizes):
        part = message[offset : offset + size]
        offset += size
        if index == 0:
            reassembler.start_untrusted(len(message), part)
        else:
            reassembler.continue_untrusted(part)
        observed.append(budget.in_use)
    require(observed == charges, "reassembly budget charges")
    cases = []
    for ops, outcome, description in REASSEMBLY_CASES:
        budget = ReassemblyBudget()
        reassembler = Reassembler(16 * 1024 * 1024, budget)
        got, in_use = "incomplete", []
        try:
            for kind, total, length in ops:
                if kind == "start":
                    assert total is not None
                    result = reassembler.start_untrusted(total, bytes(length))
                else:
                    result = reassembler.continue_untrusted(bytes(length))
                in_use.append(budget.in_use)
                if result is not None:
                    got = "delivered"
        except ProtocolError as exc:
            got = type(exc).__name__
        require(got == outcome, f"reassembly case {description!r}")
        cases.append(
            {
                "description": description,
                "records": [
                    {"type": f"MESSAGE_{kind.upper()}", "total": total, "fragment_length": length}
                    if total is not None
                    else {"type": f"MESSAGE_{kind.upper()}", "fragment_length": length}
                    for kind, total, length in ops
                ],
                "outcome": outcome,
                "budget_in_use_after_each_accepted_record": in_use,
            }
        )
    return {
        "min_nonfinal_fragment": MIN_NONFINAL_FRAGMENT,
        "fragment_overhead": FRAGMENT_OVERHEAD,
        "budget_in_use_after_each_record": charges,
        "cases": cases,
    }
