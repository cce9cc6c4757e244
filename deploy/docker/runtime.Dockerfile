# The shared base of every container release: the runtime deps plus EdgeFleet's model server,
# serving one model file over the agent's InferenceService + grpc.health.v1 on port 50051.
# Built by deploy/docker/runtime-image.sh; a release adds one layer with /model/model.onnx.
ARG DEPS
FROM ${DEPS}
COPY src /opt/edgefleet/src
ENV PYTHONPATH=/opt/edgefleet/src \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65534:65534
EXPOSE 50051
ENTRYPOINT ["/opt/edgefleet/bin/python", "-m", "edgefleet.agent.modelserver"]
CMD ["--model", "/model/model.onnx", "--listen", "0.0.0.0:50051"]
