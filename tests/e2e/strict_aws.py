"""AWS as strict as AWS: moto's server with IAM enforced, and each function's role from the template.

moto checks a request's signature and its caller's IAM policies once
``INITIAL_NO_AUTH_ACTION_COUNT`` requests have passed (moto docs, "IAM-like Access Control").
Run as ``python -m tests.e2e.strict_aws PORT``, this starts such a server, spends exactly those
requests on one admin user for the test harness, and prints its keys. :func:`function_policies` expands a function's
``Policies`` from the built template (managed policies of the template, inline statements) with
the stack's real names, so a handler runs with exactly what its role would allow on AWS.

moto evaluates S3 against the bucket/key ARN; for SSM, DynamoDB and Secrets Manager it only
knows ``*``, which a policy naming one ARN would never match (stricter than AWS, so every grant
would fail): the script teaches those three their resource ARN, read from the request as AWS
reads it.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import boto3

from tests.fault_proxy import FaultProxy
from tests.loopback import LoopbackServer

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
ADMIN_REQUESTS = 3  # create_user, put_user_policy, create_access_key


def _json_field(response: Any, field: str) -> str:
    body = response.body or "{}"
    try:
        data = body if isinstance(body, dict) else json.loads(body)
    except ValueError:
        return ""
    return str(data.get(field, "")) if isinstance(data, dict) else ""


def _teach_resource_arns() -> None:
    from moto.dynamodb.responses import DynamoHandler
    from moto.secretsmanager.responses import SecretsManagerResponse
    from moto.ssm.responses import SimpleSystemManagerResponse

    def ssm_arn(self: Any) -> str:
        name = _json_field(self, "Name")
        if not name:
            return "*"
        return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{name if name.startswith('/') else '/' + name}"

    def table_arn(self: Any) -> str:
        table = _json_field(self, "TableName")
        return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}" if table else "*"

    def secret_arn(self: Any) -> str:
        secret = _json_field(self, "SecretId")
        if not secret:
            return "*"
        # A secret's ARN ends in -<6 random characters>; policies name it with a trailing *.
        if secret.startswith("arn:"):
            return secret
        return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{secret}-AbCdEf"

    SimpleSystemManagerResponse._determine_resource = ssm_arn  # type: ignore[attr-defined]
    DynamoHandler._determine_resource = table_arn  # type: ignore[attr-defined]
    SecretsManagerResponse._determine_resource = secret_arn  # type: ignore[attr-defined]


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _session(access_key: str) -> tuple[str, str, str] | None:
    """(secret, session token, role name) of an assumed-role session moto issued."""
    from moto.sts.models import sts_backends

    for role in sts_backends[ACCOUNT]["aws"].assumed_roles:
        if role.access_key_id == access_key:
            return role.secret_access_key, role.session_token, role.role_arn.split("/")[-1]
    return None


def _role_allows(role: str, action: str, resource: str) -> bool:
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.iam.models import iam_backends

    iam = iam_backends[ACCOUNT]["aws"]
    results = [IAMPolicy(iam.get_role_policy(role, name)[1]).is_action_permitted(action, resource)
               for name in iam.list_role_policies(role)]
    return PermissionResult.PERMITTED in results and PermissionResult.DENIED not in results


def _presigned_refusal(response: Any, bucket: str | None, key: str | None) -> str | None:
    """Why S3 would refuse a presigned GET (SigV4 query string) or a presigned POST (a signed
    policy in the form), or None: the signature, the expiry, the policy's conditions, and the
    signing role's grant. moto skips all of this once IAM is enforced (it expects a header)."""
    q = {k.lower(): v[0] for k, v in response.querystring.items()}
    try:
        access_key, date, region, service, _ = q["x-amz-credential"].split("/")
    except (KeyError, ValueError):
        return "no signature"
    session = _session(access_key)
    if session is None or q.get("x-amz-security-token") != session[1]:
        return "InvalidAccessKeyId"
    signing_key = _signing_key(session[0], date, region, service)
    if "policy" in q:  # a browser-style POST: the signature covers the base64 policy
        expected = hmac.new(signing_key, q["policy"].encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, q.get("x-amz-signature", "")):
            return "SignatureDoesNotMatch"
        policy = json.loads(base64.b64decode(q["policy"]))
        if time.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ") < time.gmtime():
            return "policy expired"
        key = q.get("key", "")
        size = len(response.body or b"")
        for condition in policy["conditions"]:
            if isinstance(condition, dict):
                (field, value), = condition.items()
                actual = bucket if field == "bucket" else q.get(field.lower())
                if actual != value:
                    return f"policy condition failed: {field}"
            elif condition[0] == "content-length-range" and not condition[1] <= size <= condition[2]:
                return "EntityTooLarge" if size > condition[2] else "EntityTooSmall"
            elif condition[0] == "starts-with" and not q.get(condition[1].lstrip("$").lower(), "").startswith(
                    condition[2]):
                return f"policy condition failed: {condition[1]}"
        action = "s3:PutObject"
    else:  # a presigned URL: SigV4 over the request, UNSIGNED-PAYLOAD
        signed_at = time.strptime(q["x-amz-date"], "%Y%m%dT%H%M%SZ")
        if calendar.timegm(signed_at) + int(q["x-amz-expires"]) < time.time():
            return "Request has expired"
        sent = parse_qsl(urlsplit(response.uri).query, keep_blank_values=True)  # moto adds to querystring
        query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                         for k, v in sorted(sent) if k != "X-Amz-Signature")
        canonical = "\n".join([response.method, response.raw_path.split("?")[0], query,
                                f"host:{response.headers['Host']}\n", "host", "UNSIGNED-PAYLOAD"])
        scope = f"{date}/{region}/{service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", q["x-amz-date"], scope,
                              hashlib.sha256(canonical.encode()).hexdigest()])
        expected = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, q.get("x-amz-signature", "")):
            return "SignatureDoesNotMatch"
        action = "s3:GetObject" if response.method in ("GET", "HEAD") else "s3:PutObject"
    if not _role_allows(session[2], action, f"arn:aws:s3:::{bucket}/{key}"):
        return f"AccessDenied: {action}"
    return None


def _teach_presigned_requests() -> None:
    from moto.s3.exceptions import BucketAccessDeniedError
    from moto.s3.responses import S3Response

    header_checked = S3Response._authenticate_and_authorize_s3_action

    def checked(self: Any, bucket_name: str | None = None, key_name: str | None = None) -> None:
        if "Authorization" in self.headers:
            return header_checked(self, bucket_name=bucket_name, key_name=key_name)
        refusal = _presigned_refusal(self, bucket_name, key_name)
        if refusal is not None:
            print(f"refused a presigned request: {refusal}", file=sys.stderr, flush=True)
            raise BucketAccessDeniedError(bucket=bucket_name or "")
        return None

    S3Response._authenticate_and_authorize_s3_action = checked  # type: ignore[method-assign]


def serve(port: int) -> None:
    """Run the strict server on 127.0.0.1:port; print the admin keys as one JSON line."""
    from moto import settings
    from moto.server import ThreadedMotoServer

    _teach_resource_arns()
    _teach_presigned_requests()
    settings.INITIAL_NO_AUTH_ACTION_COUNT = ADMIN_REQUESTS
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="harness")
    iam.put_user_policy(UserName="harness", PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="harness")["AccessKey"]
    print(json.dumps({"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}),
          flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


class StrictAws:
    """The strict server in its own process (moto's settings are process-wide)."""

    def __init__(self, port: int, log: Path) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("w") as stderr:  # moto's request log and its tracebacks
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.strict_aws", str(port)],
                                         stdout=subprocess.PIPE, text=True, stderr=stderr,
                                         cwd=Path(__file__).resolve().parents[2])
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the strict moto server did not start")
        self.admin: dict[str, str] = json.loads(line)

    def client(self, service: str, **credentials: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            **(credentials or self.admin))

    def role_credentials(self, role: str, policies: list[dict[str, Any]]) -> dict[str, str]:
        """A role holding exactly ``policies`` (inline), and a session of it, as Lambda assumes it."""
        iam = self.client("iam")
        # The harness assumes it in Lambda's place (moto's trust check handles AWS principals only).
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/harness"},
             "Action": "sts:AssumeRole"}]}
        arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        for n, policy in enumerate(policies):
            iam.put_role_policy(RoleName=role, PolicyName=f"policy-{n}", PolicyDocument=json.dumps(policy))
        session = self.client("sts").assume_role(RoleArn=arn, RoleSessionName=role)["Credentials"]
        return {"AWS_ACCESS_KEY_ID": session["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": session["SecretAccessKey"],
                "AWS_SESSION_TOKEN": session["SessionToken"]}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


NO_VALUE = object()  # AWS::NoValue: the property or list entry is left out


def resolve(value: Any, template: dict[str, Any], names: dict[str, str]) -> Any:
    """CloudFormation's intrinsic functions over the stand-in's names (Ref, GetAtt .Arn, Sub, If)."""
    if isinstance(value, list):
        return [r for r in (resolve(v, template, names) for v in value) if r is not NO_VALUE]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        return {k: resolve(v, template, names) for k, v in value.items()}
    (fn, arg), = value.items()
    fn = fn.removeprefix("Fn::")
    if fn == "Ref":
        pseudo = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                  "AWS::StackName": names.get("AWS::StackName", "lookalike")}
        if arg == "AWS::NoValue":
            return NO_VALUE
        if arg in pseudo:
            return pseudo[arg]
        assert arg in names, f"the template refers to {arg}, which the stand-in does not provide"
        return names[arg]
    if fn == "GetAtt":
        resource, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
        return _attribute(template, names, resource, attribute)
    if fn == "Sub":
        text = arg if isinstance(arg, str) else arg[0]
        local = {} if isinstance(arg, str) else resolve(arg[1], template, names)

        def substitute(match: re.Match[str]) -> str:
            ref = match[1]
            if ref in local:
                return str(local[ref])
            if "." in ref:
                return _attribute(template, names, *ref.split(".", 1))
            return str(resolve({"Ref": ref}, template, names))

        return re.sub(r"\$\{([A-Za-z0-9:._]+)\}", substitute, text)
    if fn == "If":
        condition, if_true, if_false = arg
        assert f"Condition:{condition}" in names, f"the stand-in does not decide the condition {condition}"
        chosen = if_true if names[f"Condition:{condition}"] == "true" else if_false
        return resolve(chosen, template, names)
    if fn == "Select":
        index, items = arg
        return resolve(items, template, names)[int(index)]
    if fn == "Split":
        separator, text = arg
        return str(resolve(text, template, names)).split(separator)
    return {k: resolve(v, template, names) for k, v in value.items()}


def _attribute(template: dict[str, Any], names: dict[str, str], resource: str, attribute: str) -> str:
    kind = template["Resources"][resource]["Type"]
    if f"{resource}.{attribute}" in names:
        return names[f"{resource}.{attribute}"]
    assert attribute == "Arn", f"{resource}.{attribute} is not modelled"
    name = names[resource]
    arns = {"AWS::S3::Bucket": f"arn:aws:s3:::{name}",
            "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}",
            "AWS::SQS::Queue": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}",
            "AWS::OpenSearchService::Domain": f"arn:aws:es:{REGION}:{ACCOUNT}:domain/{name}"}
    assert kind in arns, f"{resource}: the ARN of a {kind} is not modelled"
    return arns[kind]


def function_policies(template: dict[str, Any], function: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """The policy documents of a function's role, as the template grants them."""
    documents = []
    for policy in template["Resources"][function]["Properties"].get("Policies", []):
        if isinstance(policy, dict) and set(policy) in ({"If"}, {"Fn::If"}):  # a conditional grant
            condition, granted, otherwise = next(iter(policy.values()))
            policy = granted if names.get(f"Condition:{condition}") == "true" else otherwise
            if policy == {"Ref": "AWS::NoValue"}:
                continue
        if isinstance(policy, dict) and set(policy) == {"Ref"}:
            managed = template["Resources"][policy["Ref"]]
            assert managed["Type"] == "AWS::IAM::ManagedPolicy", f"{function}: {policy['Ref']} is not a managed policy"
            documents.append(resolve(managed["Properties"]["PolicyDocument"], template, names))
        elif isinstance(policy, dict) and "Statement" in policy:
            documents.append({"Version": "2012-10-17", **resolve(policy, template, names)})
        else:  # a SAM policy template or an AWS managed policy name: expand it here before using one
            raise AssertionError(f"{function}: the stand-in cannot expand the policy {policy!r}")
    return documents


if __name__ == "__main__":
    serve(int(sys.argv[1]))


class DomainGate:
    """What an Amazon OpenSearch Service domain checks before the engine sees a request: a
    SigV4 signature for service ``es`` by a known session, and that session's role allowing
    ``es:ESHttp<Method>`` on the domain's ARN. Plugged into the fault proxy in front of the
    real node, it answers 403 as the domain does (``{"message": ...}``) and forwards the rest."""

    service = "es"

    def __init__(self, domain: str, sessions: dict[str, tuple[dict[str, str], list[dict[str, Any]]]] | None = None,
                 ) -> None:
        self.domain_arn = f"arn:aws:es:{REGION}:{ACCOUNT}:domain/{domain}"
        self.sessions = {} if sessions is None else sessions
        self.refused: list[str] = []

    def action_and_resource(self, method: str, url: str) -> tuple[str, str]:
        return f"es:ESHttp{method.title()}", f"{self.domain_arn}{urlsplit(url).path}"

    def allow_session(self, credentials: dict[str, str], policies: list[dict[str, Any]]) -> None:
        self.sessions[credentials["AWS_ACCESS_KEY_ID"]] = (credentials, policies)

    def refusal(self, method: str, path: str, params: dict[str, str], headers: dict[str, str],
                body: bytes) -> str | None:
        """``check`` for a request a loopback server received; a refusal is also recorded."""
        host = {k.lower(): v for k, v in headers.items()}.get("host", "")
        url = f"http://{host}{path}" + (f"?{urlencode(params)}" if params else "")
        refusal = self.check(method, url, headers, body)
        if refusal is not None:
            self.refused.append(f"{method} {path}: {refusal}")
        return refusal

    def check(self, method: str, url: str, headers: dict[str, str], body: bytes) -> str | None:
        """Why the domain would refuse the request, or None."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        from moto.iam.access_control import IAMPolicy, PermissionResult

        header = {k.lower(): v for k, v in headers.items()}
        match = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                         r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$", header.get("authorization", ""))
        if not match:
            return "Missing Authentication Token"
        key, _, region, service, signed, signature = match.groups()
        if service != self.service or region != REGION or key not in self.sessions:
            return f"The security token included in the request is invalid ({service}, {region})"
        credentials, policies = self.sessions[key]
        request = AWSRequest(method=method, url=url, data=body,
                             headers={name: header[name] for name in signed.split(";") if name in header})
        signer = SigV4Auth(Credentials(key, credentials["AWS_SECRET_ACCESS_KEY"], credentials["AWS_SESSION_TOKEN"]),
                           self.service, REGION)
        request.context["timestamp"] = header.get("x-amz-date", "")
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if expected != signature:
            return "The request signature we calculated does not match the signature you provided"
        action, resource = self.action_and_resource(method, url)
        results = [IAMPolicy(json.dumps(p)).is_action_permitted(action, resource) for p in policies]
        if PermissionResult.DENIED in results or PermissionResult.PERMITTED not in results:
            return f"User is not authorized to perform: {action} on resource: {resource}"
        return None


class SignedDomainProxy(FaultProxy):
    """The fault proxy in front of the real node, behind the domain's SigV4 and IAM checks."""

    def __init__(self, upstream: str, gate: DomainGate) -> None:
        self.gate = gate
        super().__init__(upstream)

    def route(self, method: str, path: str, params: dict[str, str], headers: dict[str, str],
              raw: bytes) -> tuple[int, Any]:
        refusal = self.gate.refusal(method, path, params, headers, raw)
        if refusal is not None:
            return 403, {"message": refusal}
        return super().route(method, path, params, headers, raw)


class InvokeGate(DomainGate):
    """Lambda's Invoke API for the stack's functions, in front of the stand-in's processes: a
    SigV4 signature for ``lambda`` by a known session whose role may ``lambda:InvokeFunction``
    that function's ARN, then the event goes to that function as Lambda would hand it over."""

    service = "lambda"

    def __init__(self, sessions: dict[str, tuple[dict[str, str], list[dict[str, Any]]]]) -> None:
        super().__init__("unused", sessions)
        self.targets: dict[str, Any] = {}  # function name -> the stand-in's Function

    def action_and_resource(self, method: str, url: str) -> tuple[str, str]:
        name = urlsplit(url).path.split("/")[3]
        return "lambda:InvokeFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


class InvokeEndpoint(LoopbackServer):
    """POST /2015-03-31/functions/{name}/invocations (RequestResponse), checked by an InvokeGate."""

    def __init__(self, gate: InvokeGate) -> None:
        self.gate = gate
        self.lock = threading.Lock()  # a function's process answers one invocation at a time
        super().__init__()

    def route(self, method: str, path: str, params: dict[str, str], headers: dict[str, str],
              raw: bytes) -> tuple[int, Any]:
        refusal = self.gate.refusal(method, path, params, headers, raw)
        if refusal is not None:
            return 403, {"Message": refusal}
        target = self.gate.targets.get(path.split("/")[3])
        if target is None:
            return 404, {"Message": "Function not found"}
        with self.lock:
            try:
                return 200, target.invoke(json.loads(raw or b"{}"))
            except AssertionError as exc:  # the function failed: Lambda answers 200 with its error
                return 200, {"errorType": "Unhandled", "errorMessage": str(exc)[-2000:]}
