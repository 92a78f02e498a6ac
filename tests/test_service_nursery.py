"""open_service_nursery: the block's exception comes out as itself; background failures surface."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from p2ptls._util import open_service_nursery


@asynccontextmanager
async def service(background_error: BaseException | None = None) -> AsyncIterator[trio.Event]:
    """A context manager running a background task, like ``open_host``."""
    failed = trio.Event()

    async def background() -> None:
        if background_error is None:
            await trio.sleep_forever()
        failed.set()
        raise background_error

    async with open_service_nursery() as nursery:
        nursery.start_soon(background)
        try:
            yield failed
        finally:
            nursery.cancel_scope.cancel()


async def test_the_blocks_exception_comes_out_unwrapped() -> None:
    try:
        async with service():
            raise KeyError("from the block")
    except KeyError as exc:
        assert exc.args == ("from the block",)
    else:  # pragma: no cover
        raise AssertionError("not raised")


async def test_the_blocks_exception_keeps_its_cause_and_context() -> None:
    cause = ValueError("cause")
    with pytest.raises(OSError) as info:
        async with service():
            try:
                raise RuntimeError("context")
            except RuntimeError:
                raise OSError("from the block") from cause
    assert info.value.__cause__ is cause
    assert isinstance(info.value.__context__, RuntimeError)


async def test_an_exception_group_from_the_block_comes_out_as_itself() -> None:
    group = ExceptionGroup("the block's own", [KeyError("a"), KeyError("b")])
    with pytest.raises(ExceptionGroup) as info:
        async with service():
            raise group
    assert info.value is group


async def test_a_background_failure_surfaces_as_a_group() -> None:
    with pytest.RaisesGroup(ZeroDivisionError):
        async with service(ZeroDivisionError("background")) as failed:
            await failed.wait()
            await trio.sleep_forever()


async def test_a_background_failure_and_the_blocks_both_surface() -> None:
    with pytest.RaisesGroup(ZeroDivisionError, KeyError):
        async with service(ZeroDivisionError("background")) as failed:
            await failed.wait()
            raise KeyError("from the block")


async def test_a_cancelled_block_is_cancelled_as_with_a_plain_nursery() -> None:
    with trio.move_on_after(0) as scope:
        async with service():
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_a_clean_block_leaves_quietly() -> None:
    async with service():
        await trio.lowlevel.checkpoint()
