"""cloudimg_client.Client against a scripted gateway on loopback (a real gRPC server whose handlers answer
what each test says): the key and a fresh x-request-id on every attempt, idempotency tokens filled in and kept
across retries, what is retried and what is not, OutcomeUnknown, pagination and error decoding."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from cloudimg.gateway.v1 import image_service_pb2 as image_pb
from cloudimg.gateway.v1 import image_service_pb2_grpc as image_grpc
from cloudimg.gateway.v1 import instance_service_pb2 as instance_pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as instance_grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cloudimg_client import CallRecord, Client, OutcomeUnknown, Retry, error_reason

KEY = "ak-client-test"
FAST = Retry(attempts=3, backoff_s=0.0, within_s=5.0)


@dataclass
class Seen:
    request: object
    metadata: dict[str, str]
    deadline: float | None


@dataclass
class Script:
    """What the fake answers: refusals (code, reason) for the first calls, then success."""

    refusals: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def answer(self, request: object, context: grpc.ServicerContext) -> None:
        self.seen.append(Seen(request, dict(context.invocation_metadata()), context.time_remaining()))
        if self.refusals:
            code, reason = self.refusals.pop(0)
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="cloudimg.dev"))
            context.abort_with_status(rpc_status.to_status(status_pb2.Status(
                code=getattr(code_pb2, code.name), message=f"refused: {reason}", details=[detail])))


class Gateway(image_grpc.ImageServiceServicer, instance_grpc.InstanceServiceServicer):
    def __init__(self) -> None:
        self.script = Script()

    def RunInstances(self, request: instance_pb.RunInstancesRequest,
                     context: grpc.ServicerContext) -> instance_pb.RunInstancesResponse:
        self.script.answer(request, context)
        return instance_pb.RunInstancesResponse(instance_ids=[f"ins-{request.client_token[:8]}"])

    def GetImage(self, request: image_pb.GetImageRequest, context: grpc.ServicerContext) -> image_pb.GetImageResponse:
        self.script.answer(request, context)
        return image_pb.GetImageResponse(image=image_pb.Image(image_id=request.image_id))

    def ListImages(self, request: image_pb.ListImagesRequest,
                   context: grpc.ServicerContext) -> image_pb.ListImagesResponse:
        self.script.answer(request, context)
        start = int(request.page_token or 0)
        images = [image_pb.Image(image_id=f"img-{n:08d}") for n in range(start, min(start + 2, 5))]
        return image_pb.ListImagesResponse(images=images, next_page_token=str(start + 2) if start + 2 < 5 else "")


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[Gateway, str]]:
    fake = Gateway()  # type: ignore[abstract]  # the three methods the tests call; the rest answer UNIMPLEMENTED
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    image_grpc.add_ImageServiceServicer_to_server(fake, server)
    instance_grpc.add_InstanceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def cloud(gateway: tuple[Gateway, str]) -> Iterator[Client]:
    fake, address = gateway
    fake.script = Script()
    with Client(address, KEY, timeout=3.0, retry=FAST) as client:
        yield client


def script(gateway: tuple[Gateway, str], *refusals: tuple[grpc.StatusCode, str]) -> Script:
    gateway[0].script.refusals.extend(refusals)
    return gateway[0].script


def launch() -> instance_pb.RunInstancesRequest:
    return instance_pb.RunInstancesRequest(region="ap-guangzhou", image_id="img-00000001",
                                           instance_type="S5.MEDIUM4", instance_count=1)


def test_every_attempt_carries_the_key_a_new_request_id_and_the_deadline(cloud: Client,
                                                                         gateway: tuple[Gateway, str]) -> None:
    seen = script(gateway, (grpc.StatusCode.UNAVAILABLE, "GATEWAY_RESTARTING")).seen
    cloud.call(cloud.images.GetImage, image_pb.GetImageRequest(image_id="img-00000001"))
    assert len(seen) == 2
    assert {s.metadata["authorization"] for s in seen} == {f"Bearer {KEY}"}
    ids = [s.metadata["x-request-id"] for s in seen]
    assert len(set(ids)) == 2
    assert cloud.last_request_id == ids[-1]
    assert all(s.deadline is not None and 0 < s.deadline <= 3.1 for s in seen)  # 3 s, give or take the rounding


def test_a_change_gets_a_token_before_its_first_attempt_and_keeps_it(cloud: Client,
                                                                     gateway: tuple[Gateway, str]) -> None:
    seen = script(gateway, (grpc.StatusCode.UNAVAILABLE, ""), (grpc.StatusCode.ABORTED, "LAUNCH_OUTCOME_UNKNOWN")).seen
    request = launch()
    response = cloud.call(cloud.instances.RunInstances, request)
    assert request.client_token
    tokens = {s.request.client_token for s in seen if isinstance(s.request, instance_pb.RunInstancesRequest)}
    assert tokens == {request.client_token}
    assert len(seen) == 3
    assert list(response.instance_ids) == [f"ins-{request.client_token[:8]}"]


def test_a_token_given_is_the_one_sent(cloud: Client, gateway: tuple[Gateway, str]) -> None:
    seen = script(gateway).seen
    request = launch()
    request.client_token = "mine-0001"
    cloud.call(cloud.instances.RunInstances, request)
    assert [s.request.client_token for s in seen if isinstance(s.request, instance_pb.RunInstancesRequest)] == [
        "mine-0001"]


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_a_change_whose_outcome_stays_unknown_names_its_token(cloud: Client, gateway: tuple[Gateway, str],
                                                              code: grpc.StatusCode) -> None:
    seen = script(gateway, *[(code, "")] * 3).seen
    request = launch()
    with pytest.raises(OutcomeUnknown) as unknown:
        cloud.call(cloud.instances.RunInstances, request)
    assert (unknown.value.field, unknown.value.token) == ("client_token", request.client_token)
    assert unknown.value.error.code() is code
    assert len(seen) == (3 if code is grpc.StatusCode.UNAVAILABLE else 1)  # a deadline is not retried


def test_a_refusal_is_not_retried_and_decodes_its_reason(cloud: Client, gateway: tuple[Gateway, str]) -> None:
    seen = script(gateway, (grpc.StatusCode.INVALID_ARGUMENT, "ARCHITECTURE_MISMATCH")).seen
    with pytest.raises(grpc.RpcError) as refused:
        cloud.call(cloud.instances.RunInstances, launch())
    assert not isinstance(refused.value, OutcomeUnknown)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(refused.value) == "ARCHITECTURE_MISMATCH"
    assert len(seen) == 1


def test_a_read_that_stays_unavailable_raises_the_error_itself(cloud: Client, gateway: tuple[Gateway, str]) -> None:
    seen = script(gateway, *[(grpc.StatusCode.UNAVAILABLE, "")] * 3).seen
    with pytest.raises(grpc.RpcError) as failed:
        cloud.call(cloud.images.GetImage, image_pb.GetImageRequest(image_id="img-00000001"))
    assert not isinstance(failed.value, OutcomeUnknown)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert len(seen) == 3


def test_pages_and_all_pages_follow_the_tokens(cloud: Client) -> None:
    ids = [image.image_id for image in cloud.pages(cloud.images.ListImages, image_pb.ListImagesRequest(), "images")]
    assert ids == [f"img-{n:08d}" for n in range(5)]
    every = cloud.all_pages(cloud.images.ListImages, image_pb.ListImagesRequest(), "images")
    assert [image.image_id for image in every.images] == ids
    assert every.next_page_token == ""


def test_on_call_sees_every_attempt(gateway: tuple[Gateway, str]) -> None:
    fake, address = gateway
    fake.script = Script(refusals=[(grpc.StatusCode.UNAVAILABLE, "")])
    records: list[CallRecord] = []
    record: Callable[[CallRecord], None] = records.append
    with Client(address, KEY, retry=FAST, on_call=record) as client:
        client.call(client.images.GetImage, image_pb.GetImageRequest(image_id="img-00000001"))
    assert [(r.method, r.code) for r in records] == [("/cloudimg.gateway.v1.ImageService/GetImage", "UNAVAILABLE"),
                                                     ("/cloudimg.gateway.v1.ImageService/GetImage", "OK")]
    assert records[-1].request_id == client.last_request_id


def test_an_api_key_is_needed() -> None:
    with pytest.raises(ValueError, match="an API key is needed"):
        Client("127.0.0.1:1", "")
