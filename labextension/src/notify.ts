import { Notification } from '@jupyterlab/apputils';
import { Title } from '@lumino/widgets';

import { IReview, SyftModel } from './model';

/** More new requests than this at once get one summary notification, not one each. */
const MAX_TOASTS = 3;
/** The sidebar tab's attribute holding the count (its CSS shows it as a badge). */
const BADGE = 'syft-pending';

/** Who asks for what, in one line (JupyterLab shows notification messages as text). */
function asks(review: IReview): string {
  const who = review.requester_name || 'An unnamed user';
  const what = review.plan ? `a federated plan, ${review.function}` : review.function;
  return `${who} asks to run ${what} on ${review.domain}/${review.datasets.join(', ')}`;
}

/**
 * Tells the owner about requests waiting for a decision, with the Syft sidebar open or not:
 * the count as a badge on the sidebar's icon, and a notification for each new request
 * (Review opens its card; Approve decides it as the card's Approve does). A notification
 * goes away once its request is decided, wherever it was decided.
 */
export class PendingNotices {
  constructor(
    model: SyftModel,
    title: Title<unknown>,
    review: (request: IReview) => void
  ) {
    this._model = model;
    this._title = title;
    this._review = review;
    model.pendingChanged.connect(this._update, this);
  }

  private _update(model: SyftModel, pending: IReview[]): void {
    const count = pending.length;
    // The tab's data-syft-pending attribute (the shell keeps the tab's `id` beside it).
    const { [BADGE]: before, ...kept } = this._title.dataset;
    const shown = count ? String(count) : undefined;
    if (before !== shown) {
      this._title.dataset = shown ? { ...kept, [BADGE]: shown } : kept;
    }
    this._title.caption = count ? `Syft: ${count} waiting for your decision` : 'Syft';
    const now = new Set(pending.map(r => r.id));
    for (const [id, toast] of this._toasts) {
      if (!now.has(id)) {
        Notification.dismiss(toast);
        this._toasts.delete(id);
      }
    }
    const fresh = pending.filter(r => !this._seen.has(r.id));
    fresh.forEach(r => this._seen.add(r.id));
    if (fresh.length > MAX_TOASTS) {
      Notification.info(`${fresh.length} requests wait for your decision`, {
        autoClose: false,
        actions: [{ label: 'Review', callback: () => this._review(fresh[0]) }]
      });
      return;
    }
    for (const review of fresh) {
      const toast = Notification.info(asks(review), {
        autoClose: false,
        actions: [
          { label: 'Review', callback: () => this._review(review) },
          {
            label: 'Approve',
            displayType: 'accent',
            callback: () => void this._approve(review)
          }
        ]
      });
      this._toasts.set(review.id, toast);
    }
  }

  private async _approve(review: IReview): Promise<void> {
    this._toasts.delete(review.id);
    const decided = await this._model.decide(review, true, '');
    Notification.emit(this._model.notice, decided ? 'success' : 'error', {
      autoClose: decided ? 5000 : false
    });
  }

  private _model: SyftModel;
  private _title: Title<unknown>;
  private _review: (request: IReview) => void;
  /** Requests already notified (each once per page). */
  private _seen = new Set<string>();
  /** Open notifications by request id. */
  private _toasts = new Map<string, string>();
}
