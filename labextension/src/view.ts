import { Widget } from '@lumino/widgets';

import { IHeldPreview, IHit, IPreview, IRequest, IReview, IRound, SyftModel } from './model';

const MAX_HITS = 1000;

/** An element with a class and text; text always goes in as text, never as markup. */
function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

function badge(status: string): HTMLElement {
  return el('span', `jp-Syft-badge jp-Syft-${status}`, status);
}

/** A domain's job sandbox: "sandbox OFF" as a red badge, else its layers, muted. */
function sandbox(level: string): HTMLElement {
  if (level === 'off') {
    return el('span', 'jp-Syft-badge jp-Syft-sandboxOff', 'sandbox OFF');
  }
  return el('span', 'jp-Syft-muted', level ? ` · sandbox ${level}` : '');
}

/** A request's declared requirements, or nothing when it has none. */
function requirements(request: IRequest): HTMLElement[] {
  if (!request.requirements.length) {
    return [];
  }
  const line = el('div', 'jp-Syft-requirements', 'requirements: ');
  for (const requirement of request.requirements) {
    line.append(el('code', '', requirement), ' ');
  }
  return [line];
}

/** What a request's job asks for and, once it ran, where: one muted line each. */
function resources(request: IRequest): HTMLElement[] {
  const lines = [el('div', 'jp-Syft-muted jp-Syft-resources', request.resources)];
  if (request.ran) {
    lines.push(el('div', 'jp-Syft-muted jp-Syft-ran', `ran ${request.ran}`));
  }
  return lines;
}

function when(seconds: number | null): string {
  return seconds ? new Date(seconds * 1000).toLocaleString() : '';
}

/** "1 dataset", "3 datasets". */
function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

/** A federated plan's terms, one line each: what approving it lets every round do. */
function planTerms(request: IRequest): HTMLElement[] {
  if (!request.plan) {
    return [];
  }
  const terms = el('div', 'jp-Syft-plan');
  for (const [term, text] of request.plan) {
    const line = el('div', 'jp-Syft-planTerm');
    line.dataset.term = term;
    line.append(el('b', '', `${term}: `), text);
    terms.append(line);
  }
  return [terms];
}

/** A plan's rounds, folded: how many in each status, and each round with its times. */
function rounds(request: IRequest): HTMLElement[] {
  if (!request.rounds.length) {
    return [];
  }
  const tally = new Map<string, number>();
  request.rounds.forEach(r => tally.set(r.status, (tally.get(r.status) ?? 0) + 1));
  const box = el('details', 'jp-Syft-rounds');
  const parts = [...tally].map(([status, n]) => `${n} ${status}`).join(', ');
  box.append(el('summary', '', `${count(request.rounds.length, 'round')}: ${parts}`));
  const list = el('ul', 'jp-Syft-list');
  request.rounds.forEach((r: IRound) => {
    const item = el('li', 'jp-Syft-round');
    item.dataset.requestId = r.id;
    item.append(
      badge(r.status),
      `round ${r.round}`,
      el('span', 'jp-Syft-muted', ` · ${when(r.finished_at ?? r.submitted_at)}`)
    );
    if (r.error) {
      item.append(el('div', 'jp-Syft-reason', r.error));
    }
    list.append(item);
  });
  box.append(list);
  return [box];
}

/**
 * The Syft sidebar: Network, Datasets, My requests and Approvals. It renders the model;
 * a section is rebuilt only when its data changed, and approval cards are kept across
 * refreshes so a reason being typed is not lost.
 */
export class SyftSidebar extends Widget {
  constructor(model: SyftModel) {
    super();
    this.model = model;
    this.addClass('jp-Syft-sidebar');
    this._network = this._section('Network', 'network');
    this._datasets = this._section('Datasets', 'datasets');
    this._requests = this._section('My requests', 'requests');
    this._approvals = this._section('Approvals', 'approvals');
    this._datasets.append(this._searchForm(), this._hits, this._preview);
    this._approvals.append(
      this._approvalStatus,
      this._notice,
      this._pending,
      this._held,
      this._history
    );
    model.changed.connect(this._render, this);
  }

  readonly model: SyftModel;

  dispose(): void {
    this.model.dispose();
    super.dispose();
  }

  protected onAfterShow(): void {
    this.model.start();
    if (!this._searched) {
      this._searched = true;
      void this.model.search('');
    }
  }

  protected onAfterHide(): void {
    this.model.stop();
  }

  /** Bring a request's approval card into view (now, or once the next state shows it). */
  reveal(requestId: string): void {
    this._reveal = requestId;
    this._scrollToReveal();
    void this.model.refresh();
  }

  private _scrollToReveal(): void {
    const card = this._reveal ? this._cards.get(this._reveal) : undefined;
    if (card) {
      card.scrollIntoView({ block: 'nearest' });
      card.querySelector<HTMLInputElement>('.jp-Syft-reasonInput')?.focus();
      this._reveal = '';
    }
  }

  private _section(title: string, name: string): HTMLElement {
    const details = el('details', `jp-Syft-section jp-Syft-section-${name}`);
    details.open = true;
    details.append(el('summary', 'jp-Syft-sectionTitle', title));
    const body = el('div', 'jp-Syft-sectionBody');
    details.append(body);
    this.node.append(details);
    return body;
  }

  private _searchForm(): HTMLElement {
    const form = el('form', 'jp-Syft-search');
    const input = el('input', 'jp-Syft-searchInput');
    input.type = 'search';
    input.placeholder = 'Search datasets on the network';
    const button = el('button', 'jp-Syft-button', 'Search');
    button.type = 'submit';
    form.append(input, button);
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this.model.search(input.value);
    });
    return form;
  }

  /** Rebuild a section only if the JSON of what it shows changed. */
  private _changed(name: string, data: unknown): boolean {
    const key = JSON.stringify(data);
    if (this._keys.get(name) === key) {
      return false;
    }
    this._keys.set(name, key);
    return true;
  }

  private _render(): void {
    const model = this.model;
    const state = model.state;
    if (this._changed('network', [state?.network, state?.domains, model.stateError])) {
      this._renderNetwork();
    }
    if (this._changed('hits', [model.query, model.hits, model.unreachable, model.searchError])) {
      this._renderHits();
    }
    if (this._changed('preview', [model.preview, model.previewError])) {
      this._renderPreview(model.preview);
    }
    if (this._changed('requests', [state?.requests, model.stateError])) {
      this._renderRequests(state?.requests ?? []);
    }
    if (this._changed('approvals', [state?.approvals, model.notice])) {
      this._renderApprovals();
    }
    this._scrollToReveal();
  }

  private _renderNetwork(): void {
    const { state, stateError } = this.model;
    const body = this._network;
    body.replaceChildren();
    if (stateError) {
      body.append(el('div', 'jp-Syft-error', `Syft server API: ${stateError}`));
    }
    if (!state) {
      return;
    }
    const network = state.network;
    if (network) {
      const line = el('div', 'jp-Syft-networkLine');
      line.append(
        badge(network.online ? 'online' : 'offline'),
        el('b', '', network.name || 'network'),
        el('span', 'jp-Syft-muted', ` ${network.address}`)
      );
      body.append(line);
      if (network.error) {
        body.append(el('div', 'jp-Syft-error', network.error));
      }
    } else {
      body.append(el('div', 'jp-Syft-muted', 'No network configured.'));
    }
    const online = state.domains.filter(d => d.online).length;
    body.append(
      el('div', 'jp-Syft-muted', `${online} of ${state.domains.length} domains online`)
    );
    const list = el('ul', 'jp-Syft-list jp-Syft-domains');
    for (const domain of state.domains) {
      const item = el('li', 'jp-Syft-domain');
      item.dataset.domain = domain.name;
      item.append(badge(domain.online ? 'online' : 'offline'), el('b', '', domain.name));
      const held = domain.datasets === null ? '' : ` · ${count(domain.datasets, 'dataset')}`;
      const role = domain.roles.length ? ` · you: ${domain.roles.join(', ')}` : '';
      item.append(el('span', 'jp-Syft-muted', `${held}${role}`), sandbox(domain.sandbox));
      item.title = domain.error || domain.peer_id;
      list.append(item);
    }
    body.append(list);
  }

  private _renderHits(): void {
    const { hits, unreachable, searchError, query } = this.model;
    const body = this._hits;
    body.replaceChildren();
    if (searchError) {
      body.append(el('div', 'jp-Syft-error', searchError));
      return;
    }
    const what = query ? `matching “${query}”` : 'on the network';
    body.append(el('div', 'jp-Syft-muted', `${count(hits.length, 'dataset')} ${what}`));
    if (unreachable.length) {
      body.append(el('div', 'jp-Syft-muted', `not reached: ${unreachable.join(', ')}`));
    }
    const list = el('ul', 'jp-Syft-list jp-Syft-hits');
    const items = document.createDocumentFragment();
    for (const hit of hits.slice(0, MAX_HITS)) {
      items.append(this._hit(hit));
    }
    list.append(items);
    body.append(list);
  }

  private _hit(hit: IHit): HTMLElement {
    const item = el('li', 'jp-Syft-hit');
    item.dataset.domain = hit.domain;
    item.dataset.dataset = hit.dataset;
    item.tabIndex = 0;
    const head = el('div');
    head.append(
      el('b', '', hit.dataset),
      el('span', 'jp-Syft-muted', ` on ${hit.domain} · ${hit.rows} rows`)
    );
    if (!hit.online) {
      head.append(' ', badge('offline'));
    }
    item.append(head, el('div', 'jp-Syft-description', hit.description));
    const open = () => void this.model.openPreview(hit.domain, hit.dataset);
    item.addEventListener('click', open);
    item.addEventListener('keydown', event => event.key === 'Enter' && open());
    return item;
  }

  private _renderPreview(preview: IPreview | null): void {
    const body = this._preview;
    body.replaceChildren();
    if (this.model.previewError) {
      body.append(el('div', 'jp-Syft-error', this.model.previewError));
    }
    if (!preview) {
      body.className = 'jp-Syft-preview';
      return;
    }
    body.className = 'jp-Syft-preview jp-Syft-card';
    const close = el('button', 'jp-Syft-button jp-Syft-close', 'Close');
    close.addEventListener('click', () => this.model.closePreview());
    body.append(
      close,
      el('b', '', `${preview.domain}/${preview.dataset}`),
      el('div', 'jp-Syft-description', preview.description),
      el(
        'div',
        'jp-Syft-muted',
        `${preview.kind}, ${preview.rows} private rows (not shown); mock: ${preview.mock_rows} rows`
      ),
      el('div', 'jp-Syft-label', 'Schema'),
      this._table(
        ['column', 'type'],
        Object.entries(preview.schema).map(([k, v]) => [k, v]),
        'jp-Syft-schema'
      ),
      el('div', 'jp-Syft-label', 'Mock preview (fake values)'),
      this._table(preview.columns, preview.preview, 'jp-Syft-mock')
    );
  }

  private _table(headers: string[], rows: string[][], className: string): HTMLElement {
    const wrap = el('div', 'jp-Syft-tableWrap');
    const table = el('table', `jp-Syft-table ${className}`);
    const head = el('tr');
    headers.forEach(h => head.append(el('th', '', h)));
    table.append(head);
    for (const row of rows) {
      const tr = el('tr');
      row.forEach(cell => tr.append(el('td', '', cell)));
      table.append(tr);
    }
    wrap.append(table);
    return wrap;
  }

  private _renderRequests(requests: IRequest[]): void {
    const body = this._requests;
    body.replaceChildren();
    if (!requests.length) {
      body.append(el('div', 'jp-Syft-muted', 'No requests from you yet.'));
      return;
    }
    const list = el('ul', 'jp-Syft-list jp-Syft-myRequests');
    for (const request of requests) {
      const item = el('li', 'jp-Syft-request');
      item.dataset.requestId = request.id;
      const head = el('div');
      head.append(
        badge(request.status),
        el('b', 'jp-Syft-function', request.function),
        el('span', 'jp-Syft-muted', ` on ${request.domain}/${request.datasets.join(', ')}`)
      );
      item.append(head, ...requirements(request), ...resources(request));
      const detail = request.reason || request.error;
      if (detail) {
        item.append(el('div', 'jp-Syft-reason', detail));
      }
      item.append(
        el('div', 'jp-Syft-muted', `submitted ${when(request.submitted_at)}`),
        ...rounds(request)
      );
      list.append(item);
    }
    body.append(list);
  }

  private _renderApprovals(): void {
    const approvals = this.model.state?.approvals;
    this._approvalStatus.replaceChildren();
    this._notice.textContent = this.model.notice;
    if (!approvals || !approvals.domains.length) {
      this._approvalStatus.append(
        el('div', 'jp-Syft-muted', 'You administer no domain here: nothing to approve.')
      );
      this._pending.replaceChildren();
      this._held.replaceChildren();
      this._history.replaceChildren();
      return;
    }
    for (const domain of approvals.domains) {
      const line = el('div', 'jp-Syft-adminDomain');
      line.dataset.domain = domain.name;
      line.append(
        badge(domain.online ? 'online' : 'offline'),
        el('b', '', domain.name),
        sandbox(domain.sandbox)
      );
      this._approvalStatus.append(line);
    }
    const cards = new Map<string, HTMLElement>();
    for (const review of approvals.pending) {
      cards.set(review.id, this._cards.get(review.id) ?? this._card(review));
    }
    this._cards = cards;
    const pendingTitle = el('div', 'jp-Syft-label', `Pending (${approvals.pending.length})`);
    this._pending.replaceChildren(pendingTitle, ...cards.values());
    const held = approvals.held ?? [];
    const heldCards = new Map<string, HTMLElement>();
    for (const review of held) {
      heldCards.set(review.id, this._heldCards.get(review.id) ?? this._heldCard(review));
    }
    this._heldCards = heldCards;
    this._held.replaceChildren(
      ...(held.length
        ? [el('div', 'jp-Syft-label', `Results awaiting your release (${held.length})`)]
        : []),
      ...heldCards.values()
    );
    const list = el('ul', 'jp-Syft-list jp-Syft-history');
    for (const review of approvals.history) {
      const item = el('li', 'jp-Syft-request');
      item.dataset.requestId = review.id;
      item.append(
        badge(review.status),
        el('b', 'jp-Syft-function', review.function),
        el('span', 'jp-Syft-muted', ` ${review.domain} · ${review.requester_name || review.requester}`),
        el(
          'div',
          'jp-Syft-muted',
          `${review.decided_at ? 'decided' : 'submitted'} ${when(
            review.decided_at ?? review.submitted_at
          )}`
        )
      );
      if (review.reason) {
        item.append(el('div', 'jp-Syft-reason', review.reason));
      }
      item.append(...resources(review), ...rounds(review));
      if (review.error_full || review.log) {
        item.append(this._output(review));
      }
      list.append(item);
    }
    this._history.replaceChildren(
      el('div', 'jp-Syft-label', `History (${approvals.history.length})`),
      list
    );
  }

  private _card(review: IReview): HTMLElement {
    const card = el('div', 'jp-Syft-card jp-Syft-review');
    card.dataset.requestId = review.id;
    const head = el('div');
    head.append(
      badge(review.status),
      el('b', '', review.function),
      el('span', 'jp-Syft-muted', ` on ${review.domain}/${review.datasets.join(', ')}`)
    );
    const who = el('div', 'jp-Syft-requester');
    who.append('from ', el('b', '', review.requester_name || 'unnamed'), ' ');
    who.append(el('code', 'jp-Syft-peer', review.requester));
    const epsilon = review.epsilon === null ? '' : `, epsilon ${review.epsilon}`;
    const meta = el(
      'div',
      'jp-Syft-muted',
      `policy: ${review.policy}${epsilon} · submitted ${when(review.submitted_at)}`
    );
    const code = el('pre', 'jp-Syft-code', review.code);
    const reason = el('input', 'jp-Syft-reasonInput');
    reason.placeholder = 'Reason (required to deny)';
    const approve = el('button', 'jp-Syft-button jp-Syft-approve', 'Approve');
    const deny = el('button', 'jp-Syft-button jp-Syft-deny', 'Deny');
    const act = async (yes: boolean) => {
      approve.disabled = deny.disabled = true;
      await this.model.decide(review, yes, reason.value);
      approve.disabled = deny.disabled = false;
    };
    approve.addEventListener('click', () => void act(true));
    deny.addEventListener('click', () => void act(false));
    const actions = el('div', 'jp-Syft-actions');
    actions.append(reason, approve, deny);
    card.append(
      head,
      who,
      meta,
      ...planTerms(review),
      ...requirements(review),
      ...resources(review),
      code,
      actions
    );
    return card;
  }

  /** What a finished job said besides its result (only its owner sees it unreleased). */
  private _output(review: IReview): HTMLElement {
    const box = el('details', 'jp-Syft-output');
    const shared = review.released ? 'released to the scientist' : 'only you see this';
    box.append(el('summary', '', `Error and log (${shared})`));
    if (review.status === 'failed') {
      const seen = review.released ? 'the full text' : review.scientist_error;
      box.append(
        el('div', 'jp-Syft-label', 'The scientist sees'),
        el('pre', 'jp-Syft-scientistError', seen),
        el('div', 'jp-Syft-label', 'Full error'),
        el('pre', 'jp-Syft-errorFull', review.error_full)
      );
    }
    if (review.log) {
      box.append(el('div', 'jp-Syft-label', 'Log'), el('pre', 'jp-Syft-log', review.log));
    }
    if (review.status === 'failed' && !review.released) {
      const release = el('button', 'jp-Syft-button jp-Syft-releaseError', 'Release error and log');
      release.addEventListener('click', () => {
        release.disabled = true;
        void this.model.releaseError(review);
      });
      box.append(release);
    }
    return box;
  }

  /** A result awaiting release: its preview (fetched once) and Release / Withhold. */
  private _heldCard(review: IReview): HTMLElement {
    const card = el('div', 'jp-Syft-card jp-Syft-held');
    card.dataset.requestId = review.id;
    const head = el('div');
    head.append(
      badge(review.status),
      el('b', '', review.function),
      el('span', 'jp-Syft-muted', ` on ${review.domain}/${review.datasets.join(', ')}`)
    );
    const who = el('div', 'jp-Syft-requester');
    who.append('from ', el('b', '', review.requester_name || 'unnamed'), ' ');
    who.append(el('code', 'jp-Syft-peer', review.requester));
    const preview = el('div', 'jp-Syft-heldPreview', 'Loading the result…');
    this.model.heldPreview(review).then(
      (shown: IHeldPreview) => {
        preview.replaceChildren(el('pre', 'jp-Syft-heldText', shown.text));
        if (shown.columns.length) {
          preview.append(this._table(shown.columns, shown.rows, 'jp-Syft-heldTable'));
        }
      },
      (error: Error) => {
        preview.replaceChildren(el('div', 'jp-Syft-error', error.message));
      }
    );
    const reason = el('input', 'jp-Syft-reasonInput');
    reason.placeholder = 'Reason (required to withhold)';
    const release = el('button', 'jp-Syft-button jp-Syft-releaseResult', 'Release result');
    const withhold = el('button', 'jp-Syft-button jp-Syft-withhold', 'Withhold');
    const act = async (yes: boolean) => {
      release.disabled = withhold.disabled = true;
      await this.model.decideResult(review, yes, reason.value);
      release.disabled = withhold.disabled = false;
    };
    release.addEventListener('click', () => void act(true));
    withhold.addEventListener('click', () => void act(false));
    const actions = el('div', 'jp-Syft-actions');
    actions.append(reason, release, withhold);
    card.append(
      head,
      who,
      el('pre', 'jp-Syft-code', review.code),
      el('div', 'jp-Syft-label', 'Result (only you see it until you release it)'),
      preview,
      actions
    );
    return card;
  }

  private _network: HTMLElement;
  private _datasets: HTMLElement;
  private _requests: HTMLElement;
  private _approvals: HTMLElement;
  private _hits = el('div', 'jp-Syft-hitsBody');
  private _preview = el('div', 'jp-Syft-preview');
  private _approvalStatus = el('div', 'jp-Syft-adminDomains');
  private _notice = el('div', 'jp-Syft-notice');
  private _pending = el('div', 'jp-Syft-pending');
  private _held = el('div', 'jp-Syft-heldBody');
  private _heldCards = new Map<string, HTMLElement>();
  private _history = el('div', 'jp-Syft-historyBody');
  private _cards = new Map<string, HTMLElement>();
  private _keys = new Map<string, string>();
  private _searched = false;
  /** A request whose card to bring into view once it is shown. */
  private _reveal = '';
}
