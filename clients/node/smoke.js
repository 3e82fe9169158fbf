#!/usr/bin/env node
// A Node.js client of the cloudimg public API (cloudimg.gateway.v1), built from nothing but the
// repository's protos/ and third_party/googleapis/ (no generated code): it lists images, quotes a
// launch, launches with a client token and replays it, makes two calls that are refused and decodes
// their google.rpc.Status from the grpc-status-details-bin trailer. It prints a JSON summary of what
// it saw on stdout and exits 1 when anything differs from what the API promises (2 when it could not
// run at all, e.g. no API key or the gateway unreachable).
//
//   CLOUDIMG_API_KEY=cik_... node smoke.js                                # make run: plaintext on loopback
//   CLOUDIMG_API_KEY=cik_... node smoke.js --endpoint host:443 --ca-cert ca.pem   # a TLS gateway
//
// See README.md beside this file for every option.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

// grpc-js sends the target host as the TLS server name (SNI), an IP address too (127.0.0.1 on the test
// stack), and Node warns of that (DEP0123) on every connection; every other warning is printed as usual.
process.removeAllListeners('warning');
process.on('warning', (warning) => {
  if (warning.code !== 'DEP0123') process.stderr.write(`${warning.name}: ${warning.message}\n`);
});

const REPO = path.resolve(__dirname, '..', '..');
const INCLUDE_DIRS = [path.join(REPO, 'protos'), path.join(REPO, 'third_party', 'googleapis')];
const API_PROTOS = ['account_service', 'image_service', 'image_share_service', 'instance_service']
  .map((name) => `cloudimg/gateway/v1/${name}.proto`);
const ERROR_DOMAIN = 'cloudimg.dev';
const MISSING_IMAGE_ID = 'img-zz000000'; // well formed, never issued
const MAX_PAGES = 50;

function options() {
  const { values } = parseArgs({
    options: {
      endpoint: { type: 'string', default: process.env.CLOUDIMG_ENDPOINT || '127.0.0.1:50050' },
      'api-key': { type: 'string', default: process.env.CLOUDIMG_API_KEY || '' },
      'ca-cert': { type: 'string', default: process.env.CLOUDIMG_CA_CERT || '' },
      'server-name': { type: 'string', default: process.env.CLOUDIMG_SERVER_NAME || '' },
      region: { type: 'string', default: process.env.CLOUDIMG_REGION || 'ap-guangzhou' },
      'image-id': { type: 'string', default: process.env.CLOUDIMG_IMAGE_ID || '' },
      'arm-image-id': { type: 'string', default: process.env.CLOUDIMG_ARM_IMAGE_ID || '' },
      'instance-type': { type: 'string', default: process.env.CLOUDIMG_INSTANCE_TYPE || 'S5.MEDIUM4' },
      count: { type: 'string', default: process.env.CLOUDIMG_INSTANCE_COUNT || '2' },
      'client-token': { type: 'string', default: process.env.CLOUDIMG_CLIENT_TOKEN || '' },
      timeout: { type: 'string', default: process.env.CLOUDIMG_TIMEOUT || '15' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(fs.readFileSync(path.join(__dirname, 'README.md'), 'utf8'));
    process.exit(0);
  }
  if (!values['api-key']) throw new UsageError('an API key is needed: --api-key or CLOUDIMG_API_KEY');
  const count = Number(values.count);
  if (!Number.isInteger(count) || count < 1 || count > 100) throw new UsageError('--count must be 1 to 100');
  return {
    endpoint: values.endpoint,
    apiKey: values['api-key'],
    caCert: values['ca-cert'],
    serverName: values['server-name'],
    region: values.region,
    imageId: values['image-id'],
    armImageId: values['arm-image-id'],
    instanceType: values['instance-type'],
    count,
    clientToken: values['client-token'] || `node-smoke-${crypto.randomUUID()}`,
    timeoutSeconds: Number(values.timeout) || 15,
  };
}

class UsageError extends Error {}

// The API, loaded from the .proto files as they are in the repository.
function loadApi() {
  const definition = protoLoader.loadSync(API_PROTOS, {
    includeDirs: INCLUDE_DIRS,
    keepCase: true, // field names as in the .proto (snake_case), as grpcurl and the docs spell them
    longs: String, // int64 (google.type.Money.units, QuoteLine.quantity) as decimal strings: exact
    enums: String, // enum values by name
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).cloudimg.gateway.v1;
}

// google.rpc.Status and its details, as protobufjs types from the vendored google/rpc protos.
function loadRpcTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    if (path.isAbsolute(target)) return target;
    for (const dir of INCLUDE_DIRS) {
      const candidate = path.join(dir, target);
      if (fs.existsSync(candidate)) return candidate;
    }
    return target; // google/protobuf/*.proto: protobufjs carries the well-known types itself
  };
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto', 'google/rpc/code.proto'],
    { keepCase: true });
  root.resolveAll();
  return root;
}

function channelCredentials(opts) {
  if (!opts.caCert) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(fs.readFileSync(opts.caCert));
}

function channelOptions(opts) {
  return opts.serverName ? { 'grpc.ssl_target_name_override': opts.serverName } : {};
}

class Caller {
  constructor(opts, api) {
    const credentials = channelCredentials(opts);
    const channelOpts = channelOptions(opts);
    this.images = new api.ImageService(opts.endpoint, credentials, channelOpts);
    // Both clients on one channel (one connection), as the Python stubs share theirs.
    this.instances = new api.InstanceService(opts.endpoint, credentials,
      { ...channelOpts, channelOverride: this.images.getChannel() });
    this.apiKey = opts.apiKey;
    this.timeoutSeconds = opts.timeoutSeconds;
  }

  // One unary call: resolves with the response, rejects with grpc-js's ServiceError (code, details,
  // metadata = the trailers).
  call(client, method, request) {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${this.apiKey}`);
    const deadline = new Date(Date.now() + this.timeoutSeconds * 1000);
    return new Promise((resolve, reject) => {
      client[method](request, metadata, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
    });
  }

  // A call that must fail: the ServiceError, or null when it succeeded.
  async refusal(client, method, request) {
    try {
      await this.call(client, method, request);
      return null;
    } catch (error) {
      if (typeof error.code !== 'number') throw error;
      return error;
    }
  }

  close() {
    this.images.close();
    this.instances.close();
  }
}

// Money as an exact decimal string ("0.123" for units 0, nanos 123000000; "-1.75" for -1, -750000000).
function moneyDecimal(money) {
  if (!money) return null;
  const units = BigInt(money.units || '0');
  const nanos = BigInt(money.nanos || 0);
  const total = units * 1000000000n + nanos;
  const negative = total < 0n;
  const abs = negative ? -total : total;
  const whole = abs / 1000000000n;
  const fraction = (abs % 1000000000n).toString().padStart(9, '0').replace(/0+$/, '');
  return `${negative ? '-' : ''}${whole}${fraction ? `.${fraction}` : ''}`;
}

function moneyNanos(money) {
  return BigInt(money.units || '0') * 1000000000n + BigInt(money.nanos || 0);
}

function summarizeQuote(quote) {
  return {
    currency_code: quote.currency_code,
    charge_type: quote.charge_type,
    total: { currency_code: quote.total.currency_code, units: quote.total.units, nanos: quote.total.nanos },
    total_decimal: moneyDecimal(quote.total),
    lines: quote.lines.map((line) => ({
      kind: line.kind,
      description: line.description,
      quantity: line.quantity,
      unit: line.unit,
      unit_price: moneyDecimal(line.unit_price),
      amount: moneyDecimal(line.amount),
    })),
  };
}

// The google.rpc.Status of a refused call, decoded from its grpc-status-details-bin trailer, with its
// Any details unpacked by their type URLs.
function decodeStatus(rpcTypes, error) {
  const codeEnum = rpcTypes.lookupEnum('google.rpc.Code');
  const summary = {
    code: error.code,
    code_name: codeEnum.valuesById[error.code] || String(error.code),
    message: error.details,
    status: null,
    reason: null,
    domain: null,
    error_info_count: 0,
    details: [],
  };
  const raw = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  if (!raw.length) return summary;
  const Status = rpcTypes.lookupType('google.rpc.Status');
  const status = Status.toObject(Status.decode(raw[0]), { defaults: true });
  summary.status = { code: status.code, message: status.message };
  for (const any of status.details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    let type = null;
    try {
      type = rpcTypes.lookupType(typeName);
    } catch {
      summary.details.push({ type: typeName, undecoded: true });
      continue;
    }
    const detail = type.toObject(type.decode(any.value), { defaults: true, longs: String, enums: String });
    summary.details.push({ type: typeName, ...detail });
    if (typeName === 'google.rpc.ErrorInfo') {
      summary.error_info_count += 1;
      summary.reason = detail.reason;
      summary.domain = detail.domain;
      summary.metadata = detail.metadata;
    }
  }
  return summary;
}

async function listAllImages(caller, region) {
  const images = [];
  let pageToken = '';
  for (let page = 0; page < MAX_PAGES; page += 1) {
    // eslint-disable-next-line no-await-in-loop
    const response = await caller.call(caller.images, 'ListImages', { region, page_token: pageToken });
    images.push(...response.images);
    pageToken = response.next_page_token;
    if (!pageToken) return { images, pages: page + 1 };
  }
  throw new Error(`ListImages did not end within ${MAX_PAGES} pages`);
}

function publicImage(images, architecture) {
  return images.find((image) => image.image_type === 'IMAGE_TYPE_PUBLIC' && image.state === 'IMAGE_STATE_NORMAL'
    && image.architecture === architecture && image.os_type === 'OS_TYPE_LINUX');
}

async function run(opts) {
  const mismatches = [];
  const expect = (ok, what) => {
    if (!ok) mismatches.push(what);
    return ok;
  };
  const api = loadApi();
  const rpcTypes = loadRpcTypes();
  const caller = new Caller(opts, api);
  const summary = {
    endpoint: opts.endpoint,
    tls: Boolean(opts.caCert),
    region: opts.region,
    runtime: { node: process.version, grpc_js: require('@grpc/grpc-js/package.json').version },
  };
  let step = 'ListImages';
  try {
    // 1. ListImages
    const { images, pages } = await listAllImages(caller, opts.region);
    const imageId = opts.imageId || (publicImage(images, 'ARCHITECTURE_X86_64') || {}).image_id || '';
    const armImageId = opts.armImageId || (publicImage(images, 'ARCHITECTURE_ARM64') || {}).image_id || '';
    summary.images = {
      count: images.length,
      pages,
      by_type: images.reduce((acc, image) => ({ ...acc, [image.image_type]: (acc[image.image_type] || 0) + 1 }), {}),
      image_id: imageId,
      image_listed: images.some((image) => image.image_id === imageId),
      arm_image_id: armImageId,
    };
    expect(images.length > 0, 'ListImages returned no image');
    expect(images.every((image) => image.region === opts.region), 'ListImages returned an image of another region');
    expect(summary.images.image_listed, `the image to launch (${imageId || 'none found'}) is not in ListImages`);

    // 2. QuoteRunInstances
    step = 'QuoteRunInstances';
    const launch = { region: opts.region, image_id: imageId, instance_type: opts.instanceType,
      instance_count: opts.count };
    const quote = (await caller.call(caller.instances, 'QuoteRunInstances', launch)).quote;
    summary.quote = summarizeQuote(quote);
    const linesTotal = quote.lines.reduce((sum, line) => sum + moneyNanos(line.amount), 0n);
    expect(quote.lines.length > 0, 'the quote has no line');
    expect(moneyNanos(quote.total) === linesTotal, 'the quote total is not the sum of its lines');
    expect(moneyNanos(quote.total) > 0n, 'the quote total is not positive');
    expect(quote.total.currency_code === quote.currency_code, 'the quote total is not in the quote currency');

    // 3. RunInstances with a client token, then the same call again: the same launch
    step = 'RunInstances';
    const request = { ...launch, client_token: opts.clientToken, instance_name: 'node-smoke' };
    const first = await caller.call(caller.instances, 'RunInstances', request);
    const replay = await caller.call(caller.instances, 'RunInstances', request);
    summary.launch = {
      client_token: opts.clientToken,
      instance_ids: first.instance_ids,
      replay_instance_ids: replay.instance_ids,
      same_instance_ids: JSON.stringify(first.instance_ids) === JSON.stringify(replay.instance_ids),
      total_decimal: moneyDecimal(first.quote.total),
      replay_total_decimal: moneyDecimal(replay.quote.total),
    };
    expect(first.instance_ids.length === opts.count, `RunInstances launched ${first.instance_ids.length}, not ${opts.count}`);
    expect(first.instance_ids.every((id) => /^ins-[a-z0-9]{8}$/.test(id)), 'an instance id is not ins-xxxxxxxx');
    expect(summary.launch.same_instance_ids, 'the replay with the same client token gave other instance ids');
    expect(summary.launch.total_decimal === summary.quote.total_decimal, 'the launch was charged other than quoted');
    expect(summary.launch.replay_total_decimal === summary.launch.total_decimal, 'the replay quote differs');

    // 4. Refusals, their google.rpc.Status decoded from the grpc-status-details-bin trailer
    step = 'refusals';
    const refusals = [
      { call: 'GetImage', client: caller.images, request: { image_id: MISSING_IMAGE_ID },
        code: grpc.status.NOT_FOUND, reason: 'IMAGE_NOT_FOUND' },
    ];
    if (armImageId) {
      refusals.push({ call: 'RunInstances', client: caller.instances,
        request: { ...launch, image_id: armImageId, instance_count: 1 },
        code: grpc.status.INVALID_ARGUMENT, reason: 'ARCHITECTURE_MISMATCH' });
    } else {
      expect(false, `no public arm64 image in ${opts.region} to launch on ${opts.instanceType}`);
    }
    summary.refusals = [];
    for (const refusal of refusals) {
      // eslint-disable-next-line no-await-in-loop
      const error = await caller.refusal(refusal.client, refusal.call, refusal.request);
      const what = `${refusal.call} ${JSON.stringify(refusal.request)}`;
      if (!expect(error !== null, `${what} was not refused`)) continue;
      const seen = { call: refusal.call, request: refusal.request, ...decodeStatus(rpcTypes, error) };
      summary.refusals.push(seen);
      expect(seen.code === refusal.code, `${what}: code ${seen.code_name}, expected ${grpc.status[refusal.code]}`);
      expect(seen.status !== null, `${what}: no grpc-status-details-bin trailer`);
      if (seen.status) {
        expect(seen.status.code === error.code, `${what}: google.rpc.Status code differs from the call's`);
        expect(seen.status.message === error.details, `${what}: google.rpc.Status message differs from the call's`);
      }
      expect(seen.error_info_count === 1, `${what}: ${seen.error_info_count} ErrorInfo details, expected 1`);
      expect(seen.domain === ERROR_DOMAIN, `${what}: ErrorInfo domain ${seen.domain}, expected ${ERROR_DOMAIN}`);
      expect(seen.reason === refusal.reason, `${what}: ErrorInfo reason ${seen.reason}, expected ${refusal.reason}`);
    }
  } catch (error) {
    error.step = step;
    if (typeof error.code === 'number') error.rpcStatus = decodeStatus(rpcTypes, error);
    throw error;
  } finally {
    caller.close();
  }
  summary.mismatches = mismatches;
  summary.ok = mismatches.length === 0;
  return summary;
}

async function main() {
  let opts;
  try {
    opts = options();
  } catch (error) {
    process.stderr.write(`smoke.js: ${error.message}\n`);
    return 2;
  }
  let summary;
  try {
    summary = await run(opts);
  } catch (error) {
    // A call that failed where it must not (the gateway unreachable, a refused API key, ...).
    const failure = { ok: false, step: error.step || null, error: String(error.message || error) };
    if (error.rpcStatus) {
      failure.status = error.rpcStatus;
      process.stderr.write(`smoke.js: ${error.step} failed: ${error.rpcStatus.code_name} `
        + `${error.rpcStatus.reason || ''}: ${error.details}\n`);
    } else {
      process.stderr.write(`smoke.js: ${error.stack || error}\n`);
    }
    process.stdout.write(`${JSON.stringify(failure, null, 2)}\n`);
    return 2;
  }
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  for (const mismatch of summary.mismatches) process.stderr.write(`mismatch: ${mismatch}\n`);
  return summary.ok ? 0 : 1;
}

main().then((code) => { process.exitCode = code; });
