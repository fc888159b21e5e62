// The edit queue: edits leave in the order they were made, one in flight at a time, each based on the
// revision the previous one produced, so fast painting never provokes a 409 of its own. The queue only
// orders and retries; what an acknowledgement or a refusal means is the editor's business (callbacks).
import { ApiError } from './api.js';

const RETRY_MS = 1000;

export class EditQueue {
  // send(item) -> Promise<{patch, revision}>; onDone(item, result); onRefused(item, error) -> 'drop-all' | 'drop'
  constructor({ send, onDone, onRefused, onChange }) {
    this.items = [];
    this.inFlight = null;
    this.send = send;
    this.onDone = onDone;
    this.onRefused = onRefused;
    this.refusing = 0;
    this.onChange = onChange || (() => {});
    this.waiters = [];
    this.offline = false;
  }

  get length() { return this.items.length + (this.inFlight ? 1 : 0) + this.refusing; }

  push(item) {
    item.queuedAt = performance.now();
    this.items.push(item);
    this.onChange();
    this.pump();
  }

  // every queued edit answered (acknowledged or refused)
  idle() {
    if (!this.length) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  // drop the edits not yet sent; returns them so their previews can be rolled back
  clear() {
    const dropped = this.items;
    this.items = [];
    this.onChange();
    return dropped;
  }

  async pump() {
    if (this.inFlight || !this.items.length) {
      if (!this.length) this.waiters.splice(0).forEach((resolve) => resolve());
      return;
    }
    const item = this.items.shift();
    this.inFlight = item;
    this.onChange();
    try {
      const result = await this.send(item);
      this.offline = false;
      this.inFlight = null;
      this.onDone(item, result);
    } catch (err) {
      // the network, or a server asking us to slow down: keep the edit first in line and try again
      const busy = err instanceof ApiError && (err.status === 429 || err.status === 503);
      if (!(err instanceof ApiError) || busy) {
        this.offline = !busy;
        this.items.unshift(item);
        this.inFlight = null;
        this.onChange();
        setTimeout(() => this.pump(), busy ? Math.max(RETRY_MS, 1000 * (err.retryAfter || 0)) : RETRY_MS);
        return;
      }
      this.inFlight = null;
      // a refusal may reload the labels: the queue is not idle until that is done
      this.refusing += 1;
      try {
        await this.onRefused(item, err);
      } finally {
        this.refusing -= 1;
      }
    }
    this.onChange();
    this.pump();
  }
}
