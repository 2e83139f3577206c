"""The socket-pair channel between the main process and an ingest worker."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from monitord.ingest_channel import Channel, ChannelClosed
from monitord.items import Prediction


async def test_messages_arrive_whole_and_in_order() -> None:
    left_sock, right_sock = socket.socketpair()
    left, right = await Channel.open(left_sock), await Channel.open(right_sock)
    prediction = Prediction(id="a", source="http", class_name="7", class_index=7, confidence=0.9,
                            signals={"confidence": 0.9}, time="2026-11-27T00:00:00.000+00:00")
    signals = {"confidence": np.linspace(0, 1, 100_000)}  # larger than one socket buffer
    left.send(("batch", 1, [prediction], signals, []))
    left.send(("metrics", [("images", (), 1)]))
    first = await right.receive()
    assert first[0] == "batch" and first[1] == 1 and first[2] == [prediction]
    np.testing.assert_array_equal(first[3]["confidence"], signals["confidence"])
    assert await right.receive() == ("metrics", [("images", (), 1)])
    await left.close()
    with pytest.raises(ChannelClosed):
        await right.receive()
    await right.close()
