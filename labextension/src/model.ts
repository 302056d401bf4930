import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from './api';

/** A domain as the server's client node sees it (roles: yours there, if any). */
export interface IDomain {
  name: string;
  peer_id: string;
  online: boolean;
  datasets: number | null;
  roles: string[];
  error: string;
  /** The job sandbox: "on: <layers>", "off" (jobs run unconfined), "" if unknown. */
  sandbox: string;
}

export interface INetwork {
  address: string;
  name: string;
  online: boolean;
  error: string;
}

/** One round of a federated plan, listed under its plan. */
export interface IRound {
  id: string;
  round: number;
  status: string;
  error: string;
  submitted_at: number;
  finished_at: number | null;
}

export interface IRequest {
  domain: string;
  id: string;
  function: string;
  datasets: string[];
  policy: string;
  epsilon: number | null;
  status: string;
  reason: string;
  error: string;
  submitted_at: number;
  decided_at: number | null;
  finished_at: number | null;
  /** Packages the job runs with beyond the domain's own (built by the domain). */
  requirements: string[];
  /** What the job asks the executor for, in words ("asks for 2 cpus, 0 gpus, 4 GiB"). */
  resources: string;
  /** Where its job ran, with what, how long, in how many attempts ("" until it ran). */
  ran: string;
  /** A federated plan: [term, what its approval lets every round do] lines. */
  plan: [string, string][] | null;
  /** A federated round: [plan id, round]; listed under its plan instead (`rounds`). */
  plan_round: [string, number] | null;
  rounds: IRound[];
}

/** A request as its reviewer sees it: who asked, and the code. */
export interface IReview extends IRequest {
  requester: string;
  requester_name: string;
  code: string;
  /** What the scientist sees of a failure until it is released. */
  scientist_error: string;
  /** Sealed at rest, opened by the domain for its owner: the full error and the job's log. */
  error_full: string;
  log: string;
  released: boolean;
}

/** A result awaiting the owner's release, as text (and, for a table, its first rows). */
export interface IHeldPreview {
  domain: string;
  id: string;
  text: string;
  columns: string[];
  rows: string[][];
}

export interface IState {
  me: string[];
  network: INetwork | null;
  domains: IDomain[];
  requests: IRequest[];
  approvals: {
    domains: { name: string; online: boolean; sandbox: string }[];
    pending: IReview[];
    /** Results awaiting the owner's release (release="after_review"). */
    held: IReview[];
    history: IReview[];
  };
}

export interface IHit {
  domain: string;
  dataset: string;
  description: string;
  rows: number;
  schema: Record<string, string>;
  online: boolean;
}

export interface IPreview {
  domain: string;
  dataset: string;
  description: string;
  kind: string;
  rows: number;
  mock_rows: number;
  schema: Record<string, string>;
  columns: string[];
  preview: string[][];
}

const POLL_MS = 2000;
/** The requests waiting for a decision: polled with the sidebar open or closed. */
const PENDING_POLL_MS = 2000;

/**
 * What the Syft sidebar shows, refreshed by polling the server extension while the
 * sidebar is open; the view listens to `changed` and never calls the API itself.
 */
export class SyftModel {
  state: IState | null = null;
  stateError = '';
  hits: IHit[] = [];
  unreachable: string[] = [];
  query = '';
  searchError = '';
  preview: IPreview | null = null;
  previewError = '';
  /** The outcome of the last approve / deny (a refusal says why). */
  notice = '';
  /** Requests waiting for your decision on the domains you administer. */
  pending: IReview[] = [];

  constructor() {
    this._poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: POLL_MS, backoff: false },
      standby: 'when-hidden',
      auto: false
    });
    this._pendingPoll = new Poll({
      factory: () => this.refreshPending(),
      frequency: { interval: PENDING_POLL_MS, backoff: false },
      standby: 'when-hidden'
    });
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted after each read of the pending requests (for notifications and the badge). */
  get pendingChanged(): ISignal<this, IReview[]> {
    return this._pendingChanged;
  }

  /** Poll while the sidebar is visible. */
  start(): void {
    void this._poll.start();
  }

  stop(): void {
    void this._poll.stop();
  }

  dispose(): void {
    this._poll.dispose();
    this._pendingPoll.dispose();
    Signal.clearData(this);
  }

  async refresh(): Promise<void> {
    try {
      this.state = await requestAPI<IState>('state');
      this.stateError = '';
    } catch (error) {
      this.stateError = String((error as Error).message ?? error);
    }
    this._changed.emit();
  }

  /** Read the pending requests; a failure keeps the last ones (the sidebar shows why). */
  async refreshPending(): Promise<void> {
    try {
      const found = await requestAPI<{ pending: IReview[] }>('pending');
      this.pending = found.pending;
    } catch {
      return;
    }
    this._pendingChanged.emit(this.pending);
  }

  async search(text: string): Promise<void> {
    this.query = text;
    try {
      const found = await requestAPI<{ hits: IHit[]; unreachable: string[] }>(
        `datasets?q=${encodeURIComponent(text)}`
      );
      this.hits = found.hits;
      this.unreachable = found.unreachable;
      this.searchError = '';
    } catch (error) {
      this.hits = [];
      this.searchError = String((error as Error).message ?? error);
    }
    this._changed.emit();
  }

  async openPreview(domain: string, dataset: string): Promise<void> {
    const query = `domain=${encodeURIComponent(domain)}&dataset=${encodeURIComponent(dataset)}`;
    try {
      this.preview = await requestAPI<IPreview>(`preview?${query}`);
      this.previewError = '';
    } catch (error) {
      this.preview = null;
      this.previewError = `${domain}/${dataset}: ${(error as Error).message}`;
    }
    this._changed.emit();
  }

  closePreview(): void {
    this.preview = null;
    this.previewError = '';
    this._changed.emit();
  }

  /**
   * Approve or deny at once on the domain (the sidebar's buttons and the notifications'
   * Approve alike); a refusal is kept as that request's notice. True if it was decided.
   */
  async decide(review: IReview, approve: boolean, reason: string): Promise<boolean> {
    let decided = false;
    try {
      const done = await requestAPI<IRequest>('decisions', {
        method: 'POST',
        body: JSON.stringify({
          domain: review.domain,
          request_id: review.id,
          approve,
          reason
        })
      });
      this.notice = `${done.function} (${done.id.slice(0, 8)}) on ${done.domain}: ${done.status}`;
      decided = true;
    } catch (error) {
      this.notice = `${review.function} (${review.id.slice(0, 8)}) not changed: ${
        (error as Error).message
      }`;
    }
    await Promise.all([this.refresh(), this.refreshPending()]);
    return decided;
  }

  /** Let the scientist read a failed job's full error and log. */
  async releaseError(review: IReview): Promise<void> {
    await this._act(review, 'release_error', {}, 'error and log released');
  }

  /** Release a held result to the scientist, or withhold it (a reason is required). */
  async decideResult(review: IReview, release: boolean, reason: string): Promise<void> {
    const done = release ? 'result released' : 'result withheld';
    await this._act(review, 'held_result', { release, reason }, done);
  }

  /** The held result for the owner's eyes (the domain re-seals it to the owner). */
  async heldPreview(review: IReview): Promise<IHeldPreview> {
    const query = `domain=${encodeURIComponent(review.domain)}&request_id=${encodeURIComponent(
      review.id
    )}`;
    return requestAPI<IHeldPreview>(`held_result?${query}`);
  }

  private async _act(
    review: IReview,
    endpoint: string,
    extra: Record<string, unknown>,
    done: string
  ): Promise<void> {
    const name = `${review.function} (${review.id.slice(0, 8)})`;
    try {
      await requestAPI<IRequest>(endpoint, {
        method: 'POST',
        body: JSON.stringify({ domain: review.domain, request_id: review.id, ...extra })
      });
      this.notice = `${name} on ${review.domain}: ${done}`;
    } catch (error) {
      this.notice = `${name} not changed: ${(error as Error).message}`;
    }
    await this.refresh();
  }

  private _poll: Poll;
  private _pendingPoll: Poll;
  private _changed = new Signal<this, void>(this);
  private _pendingChanged = new Signal<this, IReview[]>(this);
}
