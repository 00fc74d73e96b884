// The chat example: rooms, messages, who is online, and the connection's
// state, on @fanout/client's browser bundle (the global `Fanout`). No build
// step and no framework; serve.mjs serves it (see there).
'use strict';

const $ = (id) => document.getElementById(id);
const me = new URLSearchParams(location.search).get('user');
/** Joined rooms by name: { sub, messages, keys, members, unread, notice }. */
const rooms = new Map();
const MAX_MESSAGES = 500; // per room, oldest dropped
let active = '';
let client;
let everConnected = false;

main().catch((e) => showHint(`Cannot start: ${e.message}`));

async function main() {
  if (!me) {
    $('login').hidden = false;
    $('login').addEventListener('submit', (e) => {
      e.preventDefault();
      location.search = `?user=${encodeURIComponent($('login-name').value)}`;
    });
    return;
  }
  const config = await (await fetch('/config')).json();
  $('me').textContent = me;
  $('app').hidden = false;

  client = new Fanout.FanoutClient(config.url, {
    // A page cannot set headers and must not hold the secret: the server
    // mints the token. Called to connect, before `exp`, and after a 4001.
    getToken: async () => {
      const res = await fetch(`/token?user=${encodeURIComponent(me)}`);
      if (!res.ok) throw new Error(`GET /token answered ${res.status}: ${await res.text()}`);
      return res.text();
    },
  });
  client.on('state', ({ state }) => {
    $('connection').dataset.state = state;
    $('state').textContent = state;
  });
  client.on('connected', (welcome) => {
    everConnected = true;
    $('detail').textContent = ` · ${welcome.node}`; // in a cluster: which node this tab is on
    showHint('');
  });
  client.on('disconnected', (d) => {
    const retry = d.delayMs === undefined ? '' : `, retrying in ${(d.delayMs / 1000).toFixed(1)} s`;
    $('detail').textContent = d.willReconnect ? ` · closed ${d.code}${retry}` : ` · closed ${d.code}`;
    if (!everConnected && config.url.startsWith('wss:')) showCertificateHint(config.url);
  });
  client.on('error', (e) => console.warn('fanout:', e.kind, e.message));

  $('join').addEventListener('submit', (e) => {
    e.preventDefault();
    join($('room-name').value.trim());
    $('room-name').value = '';
  });
  $('send').addEventListener('submit', (e) => {
    e.preventDefault();
    void send($('message').value.trim());
    $('message').value = '';
  });
  join('lobby');
  client.connect().catch((e) => showHint(`Not connected: ${e.message}`));
}

/** Subscribes (once) and shows the room. */
function join(name) {
  if (!rooms.has(name)) {
    const room = { name, sub: client.subscribe(name, { presenceEvents: true }), messages: [], keys: new Set(), members: new Set(), unread: 0, notice: '' };
    rooms.set(name, room);
    room.sub.on('subscribed', (s) => void onSubscribed(room, s));
    room.sub.on('message', (m) => addMessages(room, [m], true));
    room.sub.on('join', ({ user }) => {
      room.members.add(user);
      render();
    });
    room.sub.on('leave', ({ user }) => {
      room.members.delete(user);
      render();
    });
    room.sub.ready.catch((e) => {
      room.notice = `Cannot join ${name}: ${e.message}`; // e.g. 403: the token does not allow it
      render();
    });
  }
  active = name;
  rooms.get(name).unread = 0;
  render();
}

/** After every subscribe ack: the first one, and each one after a reconnect. */
async function onSubscribed(room, s) {
  // join/leave events missed while disconnected: ask who is here now.
  room.sub.presence().then(
    (members) => {
      room.members = new Set(members.map((m) => m.user));
      render();
    },
    (e) => console.warn('presence:', e.message),
  );
  // Recovered: the server replays what was missed, then goes on live. Nothing to do.
  if (s.resubscribed && s.recovered) return;
  if (s.resubscribed) {
    room.notice = 'Reconnected; some messages could not be recovered, so the latest were reloaded.';
    room.messages = [];
    room.keys.clear();
  }
  // Rooms with history (the ack carries a position) show their latest messages.
  if (s.epoch === undefined) return render();
  try {
    const page = await room.sub.history({ limit: 50 });
    addMessages(room, page.messages.filter((m) => m.epoch === s.epoch && m.offset <= s.offset), false);
  } catch (e) {
    console.warn('history:', e.message);
  }
}

async function send(text) {
  const room = rooms.get(active);
  if (!text || !room) return;
  try {
    // Everyone in the room gets it but this connection: the ack stands for our
    // copy (with the message's position, in rooms with history). While
    // disconnected it is queued and sent after the reconnect.
    const ack = await room.sub.publish('chat', { user: me, text });
    const own = { event: 'chat', data: { user: me, text }, id: `own-${crypto.randomUUID()}`, ts: Date.now(), offset: ack.offset, epoch: ack.epoch };
    addMessages(room, [own], false);
  } catch (e) {
    room.notice = `Not sent (${e.message}): ${text}`;
    render();
  }
}

/** Adds messages once each (by position in rooms with history, else by id). */
function addMessages(room, list, live) {
  for (const m of list) {
    const key = m.offset === undefined ? m.id : `${m.epoch}/${m.offset}`;
    if (room.keys.has(key)) continue;
    room.keys.add(key);
    room.messages.push(m);
    if (live && room.name !== active) room.unread += 1;
  }
  // History arrives after live messages may have: order by position where there is one.
  if (room.messages.every((m) => m.offset !== undefined)) room.messages.sort((a, b) => a.offset - b.offset);
  room.messages.splice(0, room.messages.length - MAX_MESSAGES);
  render();
}

// Rendering: textContent only, never innerHTML — messages are other people's input.
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render() {
  const room = rooms.get(active);
  $('rooms').replaceChildren(
    ...[...rooms.values()].map((r) => {
      const li = el('li', [r.name === active ? 'active' : '', r.sub.state === 'failed' ? 'failed' : ''].join(' ').trim(), r.name);
      if (r.unread > 0) li.append(el('span', 'unread', String(r.unread)));
      li.addEventListener('click', () => join(r.name));
      return li;
    }),
  );
  $('room-title').textContent = active;
  const list = $('messages');
  list.replaceChildren(...room.messages.map(renderMessage));
  if (room.notice) list.append(el('li', 'notice', room.notice));
  list.scrollTop = list.scrollHeight;
  const members = [...room.members].sort();
  $('online-count').textContent = `(${members.length})`;
  $('presence').replaceChildren(...members.map((u) => el('li', u === me ? 'me' : '', u === me ? `${u} (you)` : u)));
}

function renderMessage(m) {
  // `user` is what the sender put in the data: fanout's frames do not say who
  // published (a backend publishing for its users would vouch for it).
  const data = m.data !== null && typeof m.data === 'object' ? m.data : {};
  const from = typeof data.user === 'string' ? data.user : 'backend';
  const text = typeof data.text === 'string' ? data.text : JSON.stringify(m.data);
  const li = el('li', from === me ? 'msg own' : 'msg');
  li.append(
    el('time', '', new Date(m.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })),
    el('b', '', from),
    el('span', '', m.event === 'chat' ? text : `[${m.event}] ${text}`),
  );
  return li;
}

function showHint(text) {
  $('hint').textContent = text;
  $('hint').hidden = !text;
}

function showCertificateHint(url) {
  const check = url.replace(/^wss:/, 'https:').replace(/\/ws$/, '/nginx-healthz');
  showHint(`Cannot reach ${url}. With deploy/cluster.sh's self-signed certificate: open `);
  const link = el('a', '', check);
  link.href = check;
  link.target = '_blank';
  $('hint').append(link, ' once, accept the certificate, and come back.');
}
