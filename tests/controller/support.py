"""Helpers for the controller tests: a running controller, a device that speaks MQTT with paho,
gRPC upload and polling. No fakes: real broker, real gRPC server, real SQLite."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.common import rpc, topics, wire
from edgefleet.common import types as t
from edgefleet.common.signing import TrustStore, load_public_keys
from edgefleet.controller.config import GrpcSettings, MqttSettings, RegistrySettings, Settings
from edgefleet.controller.server import Controller
from edgefleet.v1 import controller_pb2 as pb
from edgefleet.v1 import controller_pb2_grpc

T = TypeVar("T")
DEADLINE = 10.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def settings(data_dir: Path, broker_url: str, *, max_model_bytes: int = 64 << 20) -> Settings:
    return Settings(
        data_dir=data_dir,
        grpc=GrpcSettings(bind="127.0.0.1:0", grace_s=0.5),
        mqtt=MqttSettings(url=broker_url, client_id=unique("ctl")),
        registry=RegistrySettings(max_model_bytes=max_model_bytes),
    )


@dataclass
class Running:
    controller: Controller
    channel: grpc.Channel
    stub: controller_pb2_grpc.ControllerServiceStub

    @property
    def address(self) -> str:
        return self.controller.address

    def stop(self) -> None:
        self.channel.close()
        self.controller.stop()


def start(s: Settings) -> Running:
    controller = Controller(s)
    port = controller.start()
    assert controller.mqtt.wait_connected(10), "controller did not reach the broker"
    channel = rpc.channel(f"127.0.0.1:{port}")
    return Running(controller, channel, controller_pb2_grpc.ControllerServiceStub(channel))


def upload(
    stub: controller_pb2_grpc.ControllerServiceStub, name: str, data: bytes, *, chunk: int = 4096
) -> pb.RegisteredModel:
    def parts() -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(header=pb.UploadHeader(name=name, size=len(data)))
        for i in range(0, len(data), chunk):
            yield pb.UploadModelRequest(chunk=data[i : i + chunk])

    return stub.UploadModel(parts(), timeout=DEADLINE)


def trust(stub: controller_pb2_grpc.ControllerServiceStub) -> TrustStore:
    keys = stub.ListKeys(pb.ListKeysRequest(), timeout=DEADLINE).keys
    return TrustStore(k for info in keys for k in load_public_keys(info.public_key_pem.encode()))


def eventually(probe: Callable[[], T | None], *, timeout: float = 10.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or probe}")


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    message: str

    def details(self) -> str:
        return self.message


def rpc_error(call: Callable[[], object]) -> Failure:
    """The status a call failed with (it must fail)."""
    try:
        call()
    except grpc.RpcError as exc:
        failed = rpc.error_from_rpc(exc, target="controller")
        return Failure(failed.code, failed.detail)
    raise AssertionError("the call succeeded")


class Device:
    """A paho client standing in for an agent: publishes reports, collects what it receives."""

    def __init__(self, broker_url: str, *, client_id: str | None = None) -> None:
        host, port = broker_url.removeprefix("mqtt://").split(":")
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or unique("dev"))
        self.client.on_message = lambda _c, _u, msg: self.received.put(msg)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=5)

    def status(self, device_id: str, fleet: str, **fields: object) -> None:
        status = t.DeviceStatus(device_id=device_id, fleet=fleet, phase=t.InstallPhase.IDLE)
        status = t.DeviceStatus(**{**status.__dict__, **fields})
        payload = wire.status_to_pb(status).SerializeToString()
        self.publish(topics.status(device_id), payload, retain=True)

    def subscribe(self, topic: str) -> None:
        done = queue.Queue[int]()
        self.client.on_subscribe = lambda *_args: done.put(1)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=5)

    def next_message(self, timeout: float = 10.0) -> mqtt.MQTTMessage:
        return self.received.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
