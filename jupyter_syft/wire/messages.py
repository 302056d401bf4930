"""Every message of the domain protocol, in one place; `DOMAIN` is the protocol value.

Calls travel signed (`jupyter_syft.wire.rpc`: envelope, checks, handler table); each call
class names its reply. Types are msgspec structs, decoded strictly: an unknown call, a missing
field or a wrong type is refused before any handler runs, and nothing a peer sends is ever
unpickled.
"""

from __future__ import annotations

from typing import Literal

from jupyter_syft.wire.rpc import Call, Done, Error, ErrorCode, Protocol, Signed, Struct, encode

__all__ = ["Call", "Done", "Error", "ErrorCode", "Struct", "encode"]

DOMAIN_PROTOCOL = "/jupyter-syft/domain/1"
CALL_CONTEXT = b"jupyter-syft/domain-call/2\n"

RequestStatus = Literal[
    "pending",
    "approved",
    "denied",
    "building",  # approved; its declared environment is being built (then "running")
    "running",
    "done",
    "failed",
    # release="after_review": the job ran, its result is sealed to the domain until the owner
    # releases it (then "done") or withholds it ("withheld", final)
    "awaiting_release",
    "withheld",
]
ErrorPolicy = Literal["redacted", "full"]  # what a failed job's scientist sees
ReleasePolicy = Literal["on_approval", "after_review"]  # when a result reaches the scientist
# Which requirements a request on a dataset may declare: any, none, or these package names.
RequirementsPolicy = Literal["any", "none"] | list[str]
Role = Literal["admin", "data_scientist"]


# ---- differential privacy (see jupyter_syft.privacy) ------------------------------------

Category = int | str | bool  # a public category or group key, of the column's type


class DPQuery(Struct, tag="dp_query"):
    """A built-in DP aggregate over one column of a table: jupyter_syft.privacy.queries."""

    kind: str  # count, sum, mean, variance, histogram or quantile
    epsilon: float
    column: str = ""  # count: optional (then counts rows)
    bounds: tuple[float, float] | None = None  # public bounds: sum, mean, variance, quantile
    categories: list[Category] = []  # histogram: the values to count
    quantile: float = 0.5  # quantile: which one, in (0, 1)
    by: str = ""  # grouped variant: the column to group by...
    groups: list[Category] = []  # ...and its public group keys


class DPTraining(Struct, tag="dp_training"):
    """Train a torch model with DP-SGD (Opacus) on a table: jupyter_syft.privacy.training."""

    code: str  # source text defining `function_name()`, which returns a torch.nn.Module
    function_name: str
    features: list[str]  # numeric columns, the model's inputs in this order
    label: str
    epsilon: float  # target (and charge) for a changed row
    delta: float
    feature_bounds: list[tuple[float, float]] = []  # if given: clamp and scale to [0, 1]
    loss: str = "cross_entropy"  # or "mse"
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.5
    max_grad_norm: float = 1.0


# ---- calls (client -> node) -------------------------------------------------------------


class Hello(Call["NodeInfo"], tag="hello"):
    """First call of a session: who the node is and how to reach its data plane."""


class ListDatasets(Call["DatasetList"], tag="list_datasets"):
    pass


class GetMock(Call["ArrowData"], tag="get_mock"):
    dataset: str


class SubmitRequest(Call["RequestInfo"], tag="submit_request"):
    code: str  # source text defining `function_name`
    function_name: str
    inputs: dict[str, str]  # argument name -> dataset name
    # "aggregate": the result (a 1-D numeric vector) is released only inside secure aggregation
    policy: Literal["raw", "aggregate"] = "raw"
    # Packages the code needs beyond the domain's own ("statsmodels==0.14.4"): wheels from the
    # domain's package index, built into a cached environment (jupyter_syft.domain.environments)
    requirements: list[str] = []
    # What the job asks the executor for (cpus, gpus, memory); the owner's policy caps it and
    # a request for more than the executor has is refused at submission, saying what it has.
    resources: Resources | None = None
    # Arguments (of `inputs`) the job takes as a ray.data Dataset over the dataset's
    # partitions instead of a table; only datasets stored as partitions (DatasetInfo.partitions).
    distributed: list[str] = []


class GetRequest(Call["RequestInfo"], tag="get_request"):
    request_id: str
    wait_s: float = 0.0  # long-poll: answer when the status differs from `known_status`
    known_status: str = ""


class ListRequests(Call["RequestList"], tag="list_requests"):
    status: str = ""  # "" = all


class FetchResult(Call["ResultData"], tag="fetch_result"):
    request_id: str


class Decide(Call["RequestInfo"], tag="decide"):
    request_id: str
    approve: bool
    reason: str = ""


class AddUser(Call["Done"], tag="add_user"):
    peer_id: str
    role: Role
    name: str = ""


class RemoveUser(Call["Done"], tag="remove_user"):
    """Admin: take a user's access away; their requests and audit entries stay."""

    peer_id: str


class ListUsers(Call["UserList"], tag="list_users"):
    pass


class BeginUpload(Call["UploadTickets"], tag="begin_upload"):
    dataset: str
    description: str = ""
    public: bool = False
    # Where the private table is stored: a folder or URI the cluster shares, written as
    # partitioned Parquet of at most `partition_rows` rows a file (0: ~64 MiB files); "" = the
    # domain's --storage, else its data dir (one Arrow file).
    location: str = ""
    partition_rows: int = 0


class CommitUpload(Call["DatasetInfo"], tag="commit_upload"):
    upload_id: str


class ReadAudit(Call["AuditLog"], tag="read_audit"):
    limit: int = 100


class SubmitDPQuery(Call["RequestInfo"], tag="submit_dp_query"):
    dataset: str
    query: DPQuery


class SubmitDPTraining(Call["RequestInfo"], tag="submit_dp_training"):
    dataset: str
    training: DPTraining
    requirements: list[str] = []  # as in SubmitRequest


class GetBudget(Call["BudgetList"], tag="get_budget"):
    dataset: str = ""  # "" = every dataset the caller has a budget on
    peer_id: str = ""  # admin only: whose budget ("" = the caller's)


class SetBudget(Call["BudgetInfo"], tag="set_budget"):
    """Set (not add to) a scientist's total budget on a dataset."""

    peer_id: str
    dataset: str
    epsilon: float
    delta: float = 0.0


class GetPolicy(Call["PolicyInfo"], tag="get_policy"):
    dataset: str


class SetPolicy(Call["PolicyInfo"], tag="set_policy"):
    """Change the dataset's policy: a field left None keeps its current value."""

    dataset: str
    auto_approve: bool | None = None  # run built-in DP queries in the budget without review
    max_query_epsilon: float | None = None  # refuse any DP query asking for more
    # Disclosure. "full": failed jobs' full errors and every job's log reach the scientist
    # without a release; "after_review": each result waits for the owner's release.
    errors: ErrorPolicy | None = None
    release: ReleasePolicy | None = None
    requirements: RequirementsPolicy | None = None  # what requests may declare
    # Caps on what one request's job may ask for (0 = no cap beyond the executor's machines).
    max_cpus: float | None = None
    max_gpus: int | None = None
    max_memory_mb: int | None = None


class SecAggStep(Call["SecAggFrame"], tag="secagg_step"):
    """One secure-aggregation round for an aggregate-only request: the requester's frame in."""

    request_id: str
    frame: bytes  # a signed jupyter_syft.crypto.secagg_messages frame from the requester


class ReleaseError(Call["RequestInfo"], tag="release_error"):
    """Admin: let the scientist read a failed job's full error and its log (audited)."""

    request_id: str


class PreviewResult(Call["ResultData"], tag="preview_result"):
    """Admin: a result awaiting release, re-sealed to the caller so they can look at it."""

    request_id: str


class DecideResult(Call["RequestInfo"], tag="decide_result"):
    """Admin: release a result awaiting release to its requester, or withhold it (reason)."""

    request_id: str
    release: bool
    reason: str = ""


# ---- federated learning (see jupyter_syft.federated) ---------------------------------------


class FederatedPlan(Struct, tag="federated_plan"):
    """Train one model on a domain's table, round after round: what its owner approves once.

    Each round the scientist sends the global weights; the domain trains `local_epochs` on its
    rows and returns sum-ready numbers (weights times rows), to the scientist in the clear or,
    with `secure_aggregation`, only inside a secure sum with the other domains.
    """

    code: str  # source text defining `function_name()`, which returns a torch.nn.Module
    function_name: str
    features: list[str]  # numeric columns, the model's inputs in this order
    label: str
    rounds: int
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    optimizer: Literal["adam", "sgd"] = "adam"
    loss: Literal["mse", "cross_entropy"] = "mse"
    feature_bounds: list[tuple[float, float]] = []  # if given: clamp and scale to [0, 1]
    secure_aggregation: bool = True
    epsilon: float = 0.0  # DP-SGD over all rounds (0: no DP); each round is charged a share
    delta: float = 0.0
    max_grad_norm: float = 1.0


class SubmitFederatedPlan(Call["RequestInfo"], tag="submit_federated_plan"):
    dataset: str
    plan: FederatedPlan
    requirements: list[str] = []  # as in SubmitRequest; every round runs with them


class FederatedRound(Call["RequestInfo"], tag="federated_round"):
    """Run round `round` of an approved plan from `weights`; answered with the round's request."""

    plan_id: str
    round: int  # 0-based; each number runs at most once, in increasing order
    weights: bytes  # safetensors of the global model's state dict


# ---- homomorphic inference (see jupyter_syft.crypto.he, jupyter_syft.domain.he) ----------


class CreateModel(Call["ModelInfo"], tag="create_model"):
    """Publish a model for encrypted inference; its weights never leave the domain."""

    name: str
    weights: bytes  # safetensors: layers.I.weight (out, in) and layers.I.bias (out,), float64
    description: str = ""
    max_samples: int = 0  # per scientist, samples predicted in all; 0 = no limit


class ListModels(Call["ModelList"], tag="list_models"):
    pass


class BeginContextUpload(Call["ContextTicket"], tag="begin_context_upload"):
    """Offer a public CKKS context; the node answers with a Flight `put` ticket if it lacks it."""

    digest: str  # SHA-256 of the serialised public context, hex
    nbytes: int


class CommitContextUpload(Call["Done"], tag="commit_context_upload"):
    upload_id: str


class PredictEncrypted(Call["EncryptedPrediction"], tag="predict_encrypted"):
    model: str
    query: bytes  # a jupyter_syft.crypto.he EncryptedQuery, msgpack


class GetModelUsage(Call["ModelUsageList"], tag="get_model_usage"):
    """Admin: how many predictions each scientist made with a model."""

    model: str


class ModelInfo(Struct, tag="model_info"):
    name: str
    description: str
    features: int  # jupyter_syft.crypto.he.ModelSpec
    rows: int
    outputs: int
    depth: int
    max_samples: int  # per scientist; 0 = no limit
    samples_used: int  # by the caller
    created_at: float


class ModelList(Struct, tag="model_list"):
    models: list[ModelInfo]


class ContextTicket(Struct, tag="context_ticket"):
    """`ticket` empty: the node already holds this context and nothing needs uploading."""

    upload_id: str = ""
    ticket: bytes = b""


class EncryptedPrediction(Struct, tag="encrypted_prediction"):
    reply: bytes  # a jupyter_syft.crypto.he EncryptedReply, msgpack


class ModelUsage(Struct, tag="model_usage"):
    peer_id: str
    calls: int
    samples: int
    last_at: float


class ModelUsageList(Struct, tag="model_usage_list"):
    model: str
    usage: list[ModelUsage]


Calls = (
    Hello
    | ListDatasets
    | GetMock
    | SubmitRequest
    | GetRequest
    | ListRequests
    | FetchResult
    | Decide
    | AddUser
    | RemoveUser
    | ListUsers
    | BeginUpload
    | CommitUpload
    | ReadAudit
    | SubmitDPQuery
    | SubmitDPTraining
    | GetBudget
    | SetBudget
    | GetPolicy
    | SetPolicy
    | SecAggStep
    | SubmitFederatedPlan
    | FederatedRound
    | CreateModel
    | ListModels
    | BeginContextUpload
    | CommitContextUpload
    | PredictEncrypted
    | GetModelUsage
    | ReleaseError
    | PreviewResult
    | DecideResult
)


# ---- replies (node -> client) -------------------------------------------------------------


class NodeInfo(Struct, tag="node_info"):
    name: str
    peer_id: str
    your_role: str  # "admin", "data_scientist" or "" for a stranger
    flight_location: str
    tls_cert_pem: bytes
    tls_fingerprint: str
    # The job sandbox: "on: <layers>", "off" (the owner started it with --sandbox off: jobs
    # run unconfined), or "unavailable: <missing layers>" (jobs are refused).
    sandbox: str


class DatasetInfo(Struct, tag="dataset_info"):
    name: str
    description: str
    kind: str  # "table" or "tensor"
    schema: dict[str, str]  # column -> Arrow type; for a tensor: shape and dtype
    rows: int
    mock_rows: int
    public: bool
    created_at: float
    # Stored as this many partitioned Parquet files at a location the cluster shares (a
    # request may take it as a ray.data Dataset: SubmitRequest.distributed); 0: one Arrow file
    # in the node's data dir.
    partitions: int = 0


class DatasetList(Struct, tag="dataset_list"):
    datasets: list[DatasetInfo]


class ArrowData(Struct, tag="arrow_data"):
    """A small table inline (Arrow IPC stream bytes) or, when large, a Flight ticket.

    In a ResultData it carries a sealed piece instead (`crypto.seal`, opaque bytes): inline in
    `ipc`, or a ticket for the sealed file, which Flight streams as binary slices.
    """

    ipc: bytes = b""
    ticket: bytes = b""
    nbytes: int = 0  # size of the data behind a ticket, for progress


class JobProgress(Struct, tag="job_progress"):
    """How far a queued or running request is: `done` of `total` steps, as the job reported
    them (`jupyter_syft.progress`), and the node's own words on a stage (an environment build).
    Never text from the job: see jupyter_syft.domain.jobs.progress for why."""

    done: int = 0
    total: int = 0  # 0: no step count (a stage only)
    stage: str = ""  # the node's words, e.g. "building environment: resolving"


class Resources(Struct, frozen=True):
    """What one job runs with. In a request: what it asks for (0 = the node's default)."""

    cpus: float = 0.0
    gpus: int = 0
    memory_mb: int = 0


class Placement(Struct):
    """Where a job ran and with what: every review surface and the audit log show it."""

    executor: str  # the backend's name: "local" or "ray"
    node: str  # the machine: "hostname" (local) or "ray node <id> (<address>)"
    resources: Resources  # what the job was given
    seconds: float  # wall time of the job
    attempts: int = 1  # >1: retried after the machine running it died


class RequestInfo(Struct, tag="request_info"):
    request_id: str
    requester: str
    code: str
    function_name: str
    inputs: dict[str, str]
    policy: str
    status: str
    reason: str  # the owner's reason for a denial (or for withholding a result)
    error: str  # what the scientist may see: the exception type and the frames of their code
    submitted_at: float
    decided_at: float | None
    finished_at: float | None
    result_bytes: int
    epsilon: float | None = None  # a DP request's cost, charged when it is approved
    delta: float | None = None
    privacy: DPQuery | DPTraining | None = None
    plan: FederatedPlan | None = None  # a federated plan: what was approved
    plan_round: tuple[str, int] | None = None  # a federated round: (plan id, round)
    # Sealed to the node at rest; filled in for admins, and for the requester once released.
    error_full: str = ""  # the whole error text: messages, values, traceback
    log: str = ""  # the job's stdout and stderr (capped)
    released: bool = False  # error_full and log are the requester's to read
    requirements: list[str] = []  # declared packages, checked and in canonical form
    distributed: list[str] = []  # arguments taken as a ray.data Dataset (SubmitRequest's)
    note: str = ""  # a passing word from the node on a queued or running job ("warming up")
    progress: JobProgress | None = None  # a building or running job's latest progress
    resources: Resources | None = None  # what the request asked for (None: the defaults)
    placement: Placement | None = None  # where its job ran, once it ran
    # The node's signed receipts (jupyter_syft.wire.receipts) for the audit entries about this
    # request: its submission, the decisions on it, its run. In replies about one request.
    receipts: list[Signed] = []


class RequestList(Struct, tag="request_list"):
    requests: list[RequestInfo]


class ResultData(Struct, tag="result_data"):
    """A result as stored: each piece sealed to the requester under its own context."""

    manifest: bytes  # the sealed msgspec manifest
    parts: list[ArrowData]  # sealed Arrow IPC files


class UserInfo(Struct, tag="user_info"):
    peer_id: str
    role: str
    name: str
    added_at: float


class UserList(Struct, tag="user_list"):
    users: list[UserInfo]


class UploadTickets(Struct, tag="upload_tickets"):
    upload_id: str
    private_ticket: bytes
    mock_ticket: bytes


class AuditEntry(Struct, tag="audit_entry"):
    seq: int
    at: float
    actor: str
    action: str
    subject: str
    detail: str
    hash: str


class AuditLog(Struct, tag="audit_log"):
    entries: list[AuditEntry]
    chain_ok: bool
    chain_error: str = ""  # where and how the chain breaks, when it does
    head: Signed | None = None  # the node's receipt for the newest entry, if the chain verifies


class Charge(Struct, tag="charge"):
    request_id: str
    epsilon: float
    delta: float
    at: float


class BudgetInfo(Struct, tag="budget_info"):
    peer_id: str
    dataset: str
    epsilon: float  # granted by the owner
    delta: float
    epsilon_spent: float
    delta_spent: float
    epsilon_left: float
    delta_left: float
    charges: list[Charge]


class BudgetList(Struct, tag="budget_list"):
    budgets: list[BudgetInfo]


class PolicyInfo(Struct, tag="policy_info"):
    dataset: str
    auto_approve: bool
    max_query_epsilon: float
    errors: ErrorPolicy = "redacted"
    release: ReleasePolicy = "on_approval"
    requirements: RequirementsPolicy = "any"
    max_cpus: float = 0.0  # 0: no cap beyond the executor's largest machine
    max_gpus: int = 0
    max_memory_mb: int = 0


class SecAggFrame(Struct, tag="secagg_frame"):
    """The domain's signed reply frame for one secure-aggregation round: inline, or (a large
    masked input) as a Flight ticket for the frame's bytes."""

    frame: bytes
    ticket: bytes = b""
    nbytes: int = 0


Replies = (
    NodeInfo
    | DatasetInfo
    | DatasetList
    | ArrowData
    | RequestInfo
    | RequestList
    | ResultData
    | UserList
    | UploadTickets
    | AuditLog
    | BudgetInfo
    | BudgetList
    | PolicyInfo
    | SecAggFrame
    | Done
    | ModelInfo
    | ModelList
    | ContextTicket
    | EncryptedPrediction
    | ModelUsageList
)

DOMAIN = Protocol(DOMAIN_PROTOCOL, CALL_CONTEXT, Calls, Replies)
