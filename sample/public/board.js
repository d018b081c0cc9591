/* global location, fetch, setInterval */
// The live board's page script. The reconnect loop is partysocket's ReconnectingWebSocket,
// served by the sample app from node_modules (see sample/assets.ts): same API as the browser's
// WebSocket (readyState, protocol, bufferedAmount, send, close, on* and addEventListener),
// plus back-off between attempts and `retryCount`.
import ReconnectingWebSocket from '/assets/partysocket.js';

// Indexes are the WebSocket readyState values.
const STATES = ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED'];
// Same origin as the page: the WebSocket route shares the HTTP server's port.
const WS_URL = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/demand`;
const LOG_LINES = 100;

const $ = (id) => document.getElementById(id);
const rows = new Map();
let opens = 0;
// Whether the current attempt opened, and whether it ended with an error.
let opened = false;
let failed = false;
let online = '–';

// Recovery: the id of the last message that had one. partysocket calls the URL function before
// every attempt, so a reconnect presents it and the server replays what this page missed.
let lastId;
const url = () => (lastId ? `${WS_URL}?lastEventId=${encodeURIComponent(lastId)}` : WS_URL);
// Revisions of the board pushed to this page since `firstRev`: every one once, none missing.
const revs = new Set();
let firstRev;
let maxRev = -1;
let duplicates = 0;
let renderedRev = -1;

const socket = new ReconnectingWebSocket(url, ['demand.v1'], {
  // First retry after half a second, then 1.5 times longer each time, at most 5 s apart.
  minReconnectionDelay: 500,
  reconnectionDelayGrowFactor: 1.5,
  maxReconnectionDelay: 5000,
  // A connection that stayed up 2 s counts as good: the back-off starts over after it.
  minUptime: 2000,
  connectionTimeout: 4000,
});

socket.addEventListener('open', () => {
  opened = true;
  failed = false;
  opens += 1;
  log(opens === 1 ? `open (${socket.protocol})` : `open again, reconnect #${opens - 1}`);
  showStatus();
  // The first time, fill the table now rather than waiting up to a second for a push; on a
  // reconnect, the replay brings what was missed (or says it cannot, and the board reloads).
  if (!lastId) loadBoard();
});
socket.addEventListener('message', (event) => receive(event.data));
socket.addEventListener('error', () => {
  // Browsers give no details on purpose (a refused or failed connection, a dropped link).
  // partysocket then closes the attempt itself, with a close event of its own (code 1000),
  // so the error is what tells what happened.
  failed = true;
  showStatus();
});
socket.addEventListener('close', (event) => {
  const reason = event.reason ? ` ${event.reason}` : '';
  const what = !failed
    ? `${event.code}${reason}`
    : opened
      ? 'connection lost'
      : 'could not connect';
  opened = false;
  failed = false;
  $('last-close').textContent = what;
  log(`closed: ${what}; reconnecting`);
  showStatus();
});

function receive(data) {
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    message = undefined;
  }
  if (!message || typeof message.event !== 'string') {
    log(`← ${data}`);
    return;
  }
  if (typeof message.id === 'string') lastId = message.id;
  switch (message.event) {
    case 'position':
      break;
    case 'recovery': {
      const { recovered, replayed, reason } = message.data;
      if (recovered) {
        $('recovery').textContent = `recovered, ${replayed} replayed`;
      } else {
        // The history cannot give everything this page missed: start again from the server.
        $('recovery').textContent = `not recovered (${reason}), board reloaded`;
        revs.clear();
        firstRev = undefined;
        maxRev = -1;
        renderedRev = -1;
        loadBoard();
      }
      break;
    }
    case 'welcome':
    case 'online':
      online = message.data.online;
      break;
    case 'demand':
      countRev(message.data.rev);
      renderBoard(message.data);
      if (message.data.change) {
        const { name, quantity } = message.data.change;
        log(`← ${name} set to ${quantity} through POST /api/demand`);
      }
      if ($('hide-demand').checked) return;
      break;
  }
  showStatus();
  log(`← ${data}`);
}

function showStatus() {
  const state = STATES[socket.readyState];
  $('state').textContent = `${socket.readyState} ${state}`;
  $('protocol').textContent = socket.protocol || '(none)';
  $('buffered').textContent = String(socket.bufferedAmount);
  $('retries').textContent = String(socket.retryCount);
  $('reconnects').textContent = String(Math.max(0, opens - 1));
  $('online').textContent = String(online);
  $('last-id').textContent = lastId ?? '–';
  $('pushes').textContent = String(revs.size);
  $('missed').textContent = String(firstRev === undefined ? 0 : maxRev - firstRev + 1 - revs.size);
  $('duplicates').textContent = String(duplicates);
  $('status').className =
    `status ${state === 'OPEN' ? 'open' : state === 'CLOSED' ? 'closed' : ''}`;
}

function countRev(rev) {
  firstRev ??= rev;
  if (rev < firstRev) return;
  if (revs.has(rev)) duplicates += 1;
  revs.add(rev);
  maxRev = Math.max(maxRev, rev);
}

function renderBoard({ items, at, rev }) {
  // Pushes may arrive after a fresher snapshot (or, from two instances, slightly out of order).
  if (rev <= renderedRev) return;
  renderedRev = rev;
  for (const { name, quantity } of items) {
    const row = rows.get(name) ?? addRow(name);
    const previous = row.quantity;
    row.quantity = quantity;
    if (previous === quantity) continue;
    row.quantityCell.textContent = String(quantity);
    // Restart the flash animation on the changed cell.
    row.quantityCell.classList.remove('changed');
    void row.quantityCell.offsetWidth;
    row.quantityCell.classList.add('changed');
    const trend = previous === undefined ? '' : quantity > previous ? 'up' : 'down';
    row.trendCell.textContent = trend === 'up' ? '▲' : trend === 'down' ? '▼' : '';
    row.trendCell.className = trend;
  }
  $('updated').textContent = new Date(at).toLocaleTimeString();
}

function addRow(name) {
  const tr = document.createElement('tr');
  tr.dataset.name = name;
  const nameCell = document.createElement('td');
  const quantityCell = document.createElement('td');
  const trendCell = document.createElement('td');
  nameCell.textContent = name;
  quantityCell.className = 'quantity';
  tr.append(nameCell, quantityCell, trendCell);
  $('items').append(tr);
  const option = document.createElement('option');
  option.textContent = name;
  $('set-name').append(option);
  const row = { quantity: undefined, quantityCell, trendCell };
  rows.set(name, row);
  return row;
}

async function loadBoard() {
  try {
    const response = await fetch('/api/demand');
    renderBoard(await response.json());
  } catch (error) {
    log(`GET /api/demand failed: ${error.message}`);
  }
}

function log(text) {
  const item = document.createElement('li');
  item.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  const list = $('log');
  list.prepend(item);
  while (list.childElementCount > LOG_LINES) list.lastElementChild.remove();
}

$('set-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = $('set-name').value;
  const quantity = Number($('set-quantity').value);
  try {
    const response = await fetch('/api/demand', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name, quantity }),
    });
    const result = await response.json();
    log(
      response.ok
        ? `POST /api/demand: ${name} = ${quantity}, pushed to ${result.sentTo} page(s)`
        : `POST /api/demand failed: ${result.message}`,
    );
  } catch (error) {
    log(`POST /api/demand failed: ${error.message}`);
  }
});

// bufferedAmount and retryCount change without any event; poll them so the status stays honest.
setInterval(showStatus, 250);
showStatus();
