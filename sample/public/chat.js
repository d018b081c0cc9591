/* global history, location, URL, URLSearchParams, WebSocket, setInterval */
// The chat's page script: the browser's own WebSocket, nothing else. Joining a room is opening
// a connection to /chat/<room>?name=<name>; leaving is closing it.

const STATES = ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED'];
const PROTOCOL = 'chat.v1';
const LOG_LINES = 200;

const $ = (id) => document.getElementById(id);
let socket;

function join(name, room) {
  leave();
  const url = new URL(`/chat/${encodeURIComponent(room)}`, location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('name', name);
  // Keep the address shareable: reloading the page joins the same room again.
  history.replaceState(null, '', `/chat?${new URLSearchParams({ name, room })}`);

  const ws = new WebSocket(url, [PROTOCOL]);
  socket = ws;
  // In only once the server's welcome arrived: a refusal (refuse: 'close') opens, then closes.
  let joined = false;
  notice(`joining ${room} as ${name}…`);
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.event === 'welcome') {
      joined = true;
      $('current-room').textContent = room;
    }
    receive(message);
  };
  ws.onclose = (event) => {
    const reason = event.reason ? ` ${event.reason}` : '';
    $('last-close').textContent = `${event.code}${reason}${event.wasClean ? '' : ' (not clean)'}`;
    notice(joined ? `left ${room}: ${event.code}${reason}` : whyNotIn(event));
    if (socket === ws) {
      $('current-room').textContent = '–';
      $('members').textContent = '–';
    }
    showStatus();
  };
  showStatus();
}

/**
 * Why a join failed, from the close code: the route refuses with 4000 + the HTTP status and
 * the reason; 1006 before any welcome is all a page gets from a server that is down (or from
 * an HTTP refusal, whose status scripts cannot read).
 */
function whyNotIn({ code, reason }) {
  if (code === 4401) return `log in again: ${reason}`;
  if (code === 4503 || code === 1001 || code === 1013)
    return `server busy or going down, try again later: ${reason}`;
  if (code >= 4400 && code < 4500) return `refused (${code}): ${reason}`;
  if (code >= 4500 && code < 4600) return `server error (${code}): ${reason}`;
  return `could not reach the server (${code}): is it down?`;
}

function leave() {
  if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000, 'left the room');
}

function receive({ event, data }) {
  switch (event) {
    case 'welcome':
      notice(`you are ${data.name} in ${data.room}, speaking ${data.protocol}`);
      showMembers(data.members);
      break;
    case 'joined':
      notice(`${data.name} joined`);
      showMembers(data.members);
      break;
    case 'left':
      notice(`${data.name} left`);
      showMembers(data.members);
      break;
    case 'said':
      line(`${data.from}: ${data.text}`);
      break;
    case 'sent':
      line(`${data.from} (you): ${data.text}`, 'mine');
      break;
    case 'exception':
      notice(`server: ${data.message}`);
      break;
  }
}

function showMembers(members) {
  $('members').textContent = members.join(', ');
}

function showStatus() {
  const state = socket ? STATES[socket.readyState] : undefined;
  $('state').textContent = socket ? `${socket.readyState} ${state}` : '–';
  $('protocol').textContent = socket ? socket.protocol || '(none)' : '–';
  $('buffered').textContent = socket ? String(socket.bufferedAmount) : '0';
  $('status').className =
    `status ${state === 'OPEN' ? 'open' : state === 'CLOSED' ? 'closed' : ''}`;
  $('say').disabled = state !== 'OPEN';
  $('leave').disabled = state !== 'OPEN';
}

function line(text, className = '') {
  const item = document.createElement('li');
  item.className = className;
  item.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  const list = $('log');
  list.prepend(item);
  while (list.childElementCount > LOG_LINES) list.lastElementChild.remove();
}

function notice(text) {
  line(text, 'notice');
}

$('join-form').addEventListener('submit', (event) => {
  event.preventDefault();
  join($('name').value.trim(), $('room').value.trim());
});
$('leave').addEventListener('click', () => leave());
$('say-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('line').value;
  if (!text.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ event: 'say', data: text }));
  $('line').value = '';
});

// ?name=alice&room=lobby joins at once.
const params = new URLSearchParams(location.search);
if (params.get('room')) $('room').value = params.get('room');
if (params.has('name')) {
  $('name').value = params.get('name');
  join(params.get('name').trim(), $('room').value.trim());
}
setInterval(showStatus, 250);
showStatus();
