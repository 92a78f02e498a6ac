"""Known-answer tests of fragmentation (``protocol/vectors/fragmentation.json``, SPEC.md section
6): a 40,000-byte message split, sealed and reassembled record by record, the reassembly budget
after each record, and the fragment-size minimum.
"""

from __future__ import annotations

import hashlib

from p2ptls import _wire as wire
from p2ptls._errors import ProtocolError
from p2ptls._fragments import Reassembler, ReassemblyBudget, fragment_sizes
from p2ptls._records import RecordOpener, RecordSealer
from tests.vector_files import h, load, message, message_plaintexts


def test_fragmentation() -> None:
    vector = load("fragmentation.json")
    data = message()
    sizes = fragment_sizes(len(data), vector["first_fragment_limit"], vector["record_size"])
    assert [{"offset": o, "size": s} for o, s in sizes] == vector["fragments"]
    sealer = RecordSealer(h(vector["traffic_secret"]))
    opener = RecordOpener(h(vector["traffic_secret"]))
    sealer.sequence = opener.sequence = vector["records"][0]["sequence"]
    reassembler = Reassembler(16 * 1024 * 1024, ReassemblyBudget())
    delivered: list[bytes] = []
    for record_vector, plaintext in zip(vector["records"], message_plaintexts(), strict=True):
        record = sealer.seal(record_vector["content_type"], plaintext)
        assert record.hex() == record_vector["record"]
        assert hashlib.sha256(record).hexdigest() == record_vector["record_sha256"]
        opened = opener.open_untrusted(record[:4], record[4:])
        if record_vector["content_type"] == wire.MESSAGE_START:
            total, first = wire.parse_message_start_untrusted(opened)
            assert total == len(data)
            result = reassembler.start_untrusted(total, first)
        else:
            result = reassembler.continue_untrusted(opened)
        if result is not None:
            delivered.append(result)
    assert delivered == [data]


def test_reassembly_budget_and_fragment_minimum() -> None:
    vector = load("fragmentation.json")["reassembly"]
    data = message()
    budget = ReassemblyBudget()
    reassembler = Reassembler(16 * 1024 * 1024, budget)
    in_use = []
    for index, fragment in enumerate(load("fragmentation.json")["fragments"]):
        part = data[fragment["offset"] : fragment["offset"] + fragment["size"]]
        if index == 0:
            reassembler.start_untrusted(len(data), part)
        else:
            reassembler.continue_untrusted(part)
        in_use.append(budget.in_use)
    assert in_use == vector["budget_in_use_after_each_record"]
    for case in vector["cases"]:
        budget = ReassemblyBudget()
        reassembler = Reassembler(16 * 1024 * 1024, budget)
        outcome, charges = "incomplete", []
        try:
            for record in case["records"]:
                fragment = bytes(record["fragment_length"])
                if record["type"] == "MESSAGE_START":
                    result = reassembler.start_untrusted(record["total"], fragment)
                else:
                    result = reassembler.continue_untrusted(fragment)
                charges.append(budget.in_use)
                if result is not None:
                    outcome = "delivered"
        except ProtocolError as exc:
            outcome = type(exc).__name__
        assert outcome == case["outcome"], case["description"]
        assert charges == case["budget_in_use_after_each_accepted_record"]
