// scorecast operator console. Plain JavaScript, no build step: it reads the relays from
// /api/v1, follows /api/v1/events to keep them current, and plays each relay's HLS with hls.js.
//
// Everything it shows comes from the API with the operator's token (asked for on the first
// 401 and kept in this browser). The live events are read with fetch() rather than
// EventSource, because EventSource cannot send the Authorization header.
'use strict';

(() => {
  const TOKEN_KEY = 'scorecast.token';
  /** A live events stream silent for this long (the server comments every 15 s) is dead. */
  const EVENTS_SILENT_MS = 45000;
  /** After a fatal player error, try again this much later. */
  const PLAYER_RETRY_MS = 3000;
  /** A second click on "Remove" within this long removes the destination. */
  const CONFIRM_MS = 4000;

  const $ = (id) => document.getElementById(id);

  // What the page has seen, for an operator's devtools and for the end-to-end test.
  const debug = {
    eventsSeen: 0,
    lastEventId: null,
    playerErrors: [],
    videoErrors: [],
  };
  window.scorecastConsole = debug;

  const store = {
    /** id -> { view, at }: the relay's JSON view and when it was read (performance.now()). */
    relays: new Map(),
    /** id -> { view, at }: the relay's score view. */
    scores: new Map(),
    /** id -> { view, at }: a queue relay's queue. */
    queues: new Map(),
    /** id -> { layers, at }: a relay's graphics layers. */
    graphics: new Map(),
    selected: null,
    filter: '',
  };

  // ---------------------------------------------------------------- token

  let token = sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || null;
  let asking = null;

  function setToken(value, remember) {
    token = value;
    sessionStorage.setItem(TOKEN_KEY, value);
    if (remember) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
    $('token-button').hidden = false;
  }

  function clearToken() {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    $('token-button').hidden = true;
  }

  /** Shows the token form (once, however many requests wait) and resolves with the token. */
  function askToken(reason) {
    if (asking) {
      if (reason) showError($('login-error'), reason);
      return asking;
    }
    asking = new Promise((resolve) => {
      const dialog = $('login');
      const form = $('login-form');
      showError($('login-error'), reason);
      $('login-token').value = '';
      const submit = (e) => {
        e.preventDefault();
        const value = $('login-token').value.trim();
        if (!value) return;
        form.removeEventListener('submit', submit);
        setToken(value, $('login-remember').checked);
        dialog.close();
        asking = null;
        resolve(value);
      };
      form.addEventListener('submit', submit);
      if (!dialog.open) dialog.showModal();
      $('login-token').focus();
    });
    return asking;
  }

  // Without a token nothing works: Escape does not close the form.
  $('login').addEventListener('cancel', (e) => e.preventDefault());
  $('token-button').addEventListener('click', () => {
    clearToken();
    location.reload();
  });
  $('token-button').hidden = !token;

  /** After a 401 for a request sent with `sent`: asks for a (new) token unless one came meanwhile. */
  async function unauthorized(sent, message) {
    if (token !== sent) return;
    if (sent) clearToken();
    await askToken(sent ? message : '');
  }

  // ---------------------------------------------------------------- API

  class ApiFailure extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra);
    if (token) headers.Authorization = 'Bearer ' + token;
    return headers;
  }

  /** One API call; asks for a token on 401 and tries again. Resolves with the JSON (or null). */
  async function api(method, path, body) {
    for (;;) {
      const sent = token;
      const headers = authHeaders({ Accept: 'application/json' });
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      const r = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
      const data = r.status === 204 ? null : await r.json().catch(() => null);
      if (r.status === 401) {
        await unauthorized(sent, (data && data.error && data.error.message) || 'the token is not valid');
        continue;
      }
      if (!r.ok) {
        const error = (data && data.error) || {};
        throw new ApiFailure(r.status, error.message || `HTTP ${r.status}`, error.code);
      }
      return data;
    }
  }

  const relayPath = (id) => `/api/v1/relays/${encodeURIComponent(id)}`;

  function setRelay(view) {
    store.relays.set(view.id, { view, at: performance.now() });
  }

  function setScore(id, view) {
    store.scores.set(id, { view, at: performance.now() });
  }

  async function loadAll() {
    const list = await api('GET', '/api/v1/relays');
    const at = performance.now();
    store.relays = new Map(list.map((view) => [view.id, { view, at }]));
    if (!store.selected || !store.relays.has(store.selected)) {
      const wanted = decodeURIComponent(location.hash.slice(1));
      store.selected = store.relays.has(wanted) ? wanted : list.length ? list[0].id : null;
    }
    if (store.selected) {
      await refreshScore(store.selected);
      await refreshQueue(store.selected);
      await refreshGraphics(store.selected);
    }
    render();
  }

  async function refreshRelay(id) {
    try {
      setRelay(await api('GET', relayPath(id)));
    } catch (e) {
      if (e.status === 404) forget(id);
      else notify(`${id}: ${e.message}`);
    }
    render();
  }

  async function refreshScore(id) {
    try {
      setScore(id, await api('GET', relayPath(id) + '/score'));
    } catch (e) {
      if (e.status === 404) forget(id);
      else notify(`${id}: ${e.message}`);
    }
    render();
  }

  async function refreshQueue(id) {
    const entry = store.relays.get(id);
    if (!entry || !entry.view.queue) return;
    try {
      store.queues.set(id, { view: await api('GET', relayPath(id) + '/queue'), at: performance.now() });
    } catch (e) {
      if (e.status === 404) store.queues.delete(id);
      else notify(`${id}: ${e.message}`);
    }
    render();
  }

  async function refreshGraphics(id) {
    const entry = store.relays.get(id);
    if (!entry || !entry.view.graphics) return;
    try {
      const view = await api('GET', relayPath(id) + '/graphics');
      store.graphics.set(id, { layers: view.layers, at: performance.now() });
    } catch (e) {
      if (e.status === 404) store.graphics.delete(id);
      else notify(`${id}: ${e.message}`);
    }
    render();
  }

  function forget(id) {
    store.relays.delete(id);
    store.scores.delete(id);
    store.queues.delete(id);
    store.graphics.delete(id);
    if (store.selected === id) store.selected = null;
  }

  const pending = new Map();
  /** Reads the relay again shortly: a burst of events costs one request. */
  function scheduleRefresh(id) {
    if (pending.has(id)) return;
    pending.set(
      id,
      setTimeout(() => {
        pending.delete(id);
        refreshRelay(id);
      }, 100),
    );
  }

  // ---------------------------------------------------------------- live events

  function setEventsState(state) {
    const pill = $('events');
    pill.dataset.state = state;
    pill.textContent = state === 'live' ? 'live events' : state;
  }

  function handleEvent(event) {
    const id = event.relay;
    if (event.kind === 'relay_removed') {
      forget(id);
      render();
    } else if (event.kind === 'score') {
      if (id === store.selected) refreshScore(id);
      else store.scores.delete(id);
    } else if (event.kind === 'graphics') {
      if (id === store.selected) refreshGraphics(id);
      else store.graphics.delete(id);
    } else if (event.kind === 'queue') {
      if (id === store.selected) refreshQueue(id);
      else store.queues.delete(id);
      scheduleRefresh(id);
    } else {
      scheduleRefresh(id);
    }
  }

  /** Follows /api/v1/events for as long as the page is open, resuming after the last id. */
  async function followEvents() {
    let delay = 1000;
    for (;;) {
      const abort = new AbortController();
      let silence = null;
      const arm = () => {
        clearTimeout(silence);
        silence = setTimeout(() => abort.abort(), EVENTS_SILENT_MS);
      };
      try {
        const sent = token;
        const headers = authHeaders({ Accept: 'text/event-stream' });
        if (debug.lastEventId !== null) headers['Last-Event-ID'] = String(debug.lastEventId);
        arm();
        const r = await fetch('/api/v1/events', { headers, signal: abort.signal, cache: 'no-store' });
        if (r.status === 401) {
          clearTimeout(silence);
          setEventsState('token needed');
          await unauthorized(sent, 'the token is not valid');
          continue;
        }
        if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
        setEventsState('live');
        delay = 1000;
        // What changed while the stream was down (or before it first came up) is read afresh.
        loadAll().catch((e) => notify(e.message));
        await readEvents(r.body, arm);
      } catch (e) {
        if (!abort.signal.aborted && !(e instanceof TypeError)) console.warn('live events:', e);
      } finally {
        clearTimeout(silence);
      }
      setEventsState('reconnecting');
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  }

  /** Parses a text/event-stream body and handles each event; returns when it ends. */
  async function readEvents(body, alive) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let id = null;
    let data = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      alive();
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === '') {
          if (data !== null) {
            if (id !== null) debug.lastEventId = Number(id);
            debug.eventsSeen += 1;
            try {
              handleEvent(JSON.parse(data));
            } catch (e) {
              console.warn('live events: unreadable event', e);
            }
          }
          id = null;
          data = null;
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? '' : line.slice(colon + 1);
        if (text.startsWith(' ')) text = text.slice(1);
        if (field === 'id') id = text;
        else if (field === 'data') data = data === null ? text : data + '\n' + text;
      }
    }
  }

  // ---------------------------------------------------------------- rendering helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** Keeps `list`'s children one per item, by key, creating and updating them in place. */
  function reconcile(list, items, key, create, update) {
    const old = new Map();
    for (const child of list.children) old.set(child.dataset.key, child);
    let previous = null;
    for (const item of items) {
      const k = key(item);
      let node = old.get(k);
      if (node) old.delete(k);
      else {
        node = create(item);
        node.dataset.key = k;
      }
      update(node, item);
      const next = previous ? previous.nextSibling : list.firstChild;
      if (node !== next) list.insertBefore(node, next);
      previous = node;
    }
    for (const node of old.values()) node.remove();
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—';
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }

  /** Seconds `value` (read at `at`) has grown to by now. */
  const grown = (value, at) =>
    value === null || value === undefined ? null : value + (performance.now() - at) / 1000;

  /** An RTMP URL with its last path part (the stream key) hidden. */
  function maskUrl(url) {
    const cut = url.lastIndexOf('/');
    const scheme = url.indexOf('://');
    if (cut <= scheme + 2 || cut === url.length - 1) return url;
    return url.slice(0, cut + 1) + '••••';
  }

  function setPill(node, state, text) {
    node.dataset.state = state || '';
    node.textContent = text || state || '';
  }

  let noticeTimer = null;
  function notify(message) {
    const box = $('notice');
    box.textContent = message;
    box.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => (box.hidden = true), 8000);
  }

  function showError(node, message) {
    node.textContent = message || '';
    node.hidden = !message;
  }

  // ---------------------------------------------------------------- the relay list

  function render() {
    renderList();
    renderDetail();
  }

  function renderList() {
    const all = [...store.relays.values()].map((r) => r.view).sort((a, b) => a.id.localeCompare(b.id));
    const shown = all.filter((v) => v.id.toLowerCase().includes(store.filter));
    $('relay-count').textContent = all.length ? `(${all.length})` : '';
    $('no-relays').hidden = all.length > 0;
    reconcile(
      $('relays'),
      shown,
      (v) => v.id,
      (v) => {
        const li = el('li');
        li.dataset.relay = v.id;
        li.setAttribute('role', 'option');
        li.tabIndex = 0;
        const thumb = el('img', 'r-thumb');
        thumb.alt = '';
        thumb.hidden = true;
        li.append(el('span', 'r-id', v.id), el('span', 'pill r-state'), el('span', 'r-sub'), thumb);
        li.addEventListener('click', () => select(v.id));
        li.addEventListener('keydown', (e) => {
          if (e.key === 'Enter' || e.key === ' ') {
            e.preventDefault();
            select(v.id);
          }
        });
        return li;
      },
      (li, v) => {
        li.setAttribute('aria-selected', String(v.id === store.selected));
        li.dataset.state = v.state;
        setPill(li.querySelector('.r-state'), v.state);
        const sub = li.querySelector('.r-sub');
        sub.replaceChildren();
        const showing = v.on_air ? v.on_air.showing : null;
        const onAir = el('span', showing === 'slate' ? 'warn' : '', showing ? `on air: ${showing}` : 'off air');
        onAir.dataset.field = 'showing';
        const ingest = v.ingest.url
          ? el('span', '', 'pull')
          : el('span', v.publisher ? '' : 'muted', v.publisher ? 'publisher connected' : 'no publisher');
        ingest.dataset.field = 'publisher';
        const live = v.outputs.filter((o) => o.state === 'live').length;
        const troubled = v.outputs.some((o) => o.state === 'retrying' || o.state === 'failed');
        const outs = el('span', troubled ? 'bad' : '', `${live}/${v.outputs.length} dest. live`);
        sub.append(onAir, ingest, outs);
      },
    );
  }

  function select(id) {
    if (store.selected === id) return;
    store.selected = id;
    history.replaceState(null, '', '#' + encodeURIComponent(id));
    $('score-edit').open = false;
    showError($('score-error'), '');
    showError($('output-error'), '');
    showError($('q-error'), '');
    refreshScore(id);
    refreshQueue(id);
    refreshGraphics(id);
    render();
  }

  $('filter').addEventListener('input', (e) => {
    store.filter = e.target.value.trim().toLowerCase();
    renderList();
  });

  // ---------------------------------------------------------------- the selected relay

  function renderDetail() {
    const entry = store.selected ? store.relays.get(store.selected) : null;
    $('detail').hidden = !entry;
    if (!entry) {
      if (player.relay !== null || player.state !== 'idle') stopPlayer('');
      return;
    }
    const { view: v, at } = entry;
    $('d-id').textContent = v.id;
    setPill($('d-state'), v.state);
    $('start').disabled = busy.relay || v.state !== 'stopped';
    $('stop').disabled = busy.relay || v.state === 'stopped';
    $('d-publisher').textContent = v.ingest.url
      ? `pulls ${maskUrl(v.ingest.url)}`
      : v.publisher
        ? `${v.publisher.peer} · ${duration(grown(v.publisher.connected_for, at))}`
        : 'none';
    $('d-onair').textContent = v.on_air
      ? `${v.on_air.showing} for ${duration(grown(v.on_air.for_seconds, at))}`
      : 'nothing (no program)';
    $('d-uptime').textContent = duration(grown(v.uptime, at));
    $('d-ingest').textContent = v.ingest.url ? 'pull' : 'push (RTMP)';
    const retry = v.retry ? ` (retry ${v.retry.attempt} in ${duration(v.retry.next_in - (performance.now() - at) / 1000)}: ${v.retry.reason})` : '';
    showError($('d-error'), v.last_error ? v.last_error + retry : retry);
    renderOutputs(v, at);
    renderScore();
    renderQueue(v);
    renderGraphics(v);
    updatePlayer(v);
  }

  function renderOutputs(v, at) {
    $('no-outputs').hidden = v.outputs.length > 0;
    reconcile(
      $('outputs'),
      v.outputs,
      (o) => o.id,
      (o) => {
        const li = el('li');
        li.dataset.output = o.id;
        const remove = el('button', 'danger remove', 'Remove');
        remove.type = 'button';
        remove.addEventListener('click', () => removeOutput(store.selected, o.id));
        li.append(el('span', 'o-id', o.id), el('span', 'o-url'), el('span', 'pill o-state'), remove, el('span', 'o-detail'));
        return li;
      },
      (li, o) => {
        li.dataset.state = o.state;
        li.querySelector('.o-url').textContent = maskUrl(o.url);
        setPill(li.querySelector('.o-state'), o.state);
        const armed = confirming.id === o.id && confirming.relay === v.id && performance.now() < confirming.until;
        const remove = li.querySelector('.remove');
        remove.textContent = armed ? 'Confirm remove' : 'Remove';
        remove.dataset.armed = String(armed);
        const parts = [];
        if (o.preset) parts.push(o.preset);
        if (o.height) parts.push(`${o.height}p`);
        if (o.video_kbps) parts.push(`${o.video_kbps} kb/s`);
        if (o.state === 'live') parts.push(`live for ${duration(grown(o.uptime, at))}`);
        if (o.retry) {
          const left = o.retry.next_in - (performance.now() - at) / 1000;
          parts.push(`retry ${o.retry.attempt} in ${duration(left)}`);
        }
        if (o.last_error) parts.push(o.last_error);
        const detail = li.querySelector('.o-detail');
        detail.textContent = parts.join(' · ');
        detail.classList.toggle('bad', Boolean(o.last_error) && o.state !== 'live');
      },
    );
  }

  const busy = { relay: false, score: false };
  const confirming = { relay: null, id: null, until: 0 };

  async function relayCommand(verb) {
    const id = store.selected;
    busy.relay = true;
    render();
    try {
      setRelay(await api('POST', `${relayPath(id)}/${verb}`));
    } catch (e) {
      notify(`${verb} ${id}: ${e.message}`);
    } finally {
      busy.relay = false;
      render();
    }
  }
  $('start').addEventListener('click', () => relayCommand('start'));
  $('stop').addEventListener('click', () => relayCommand('stop'));

  $('output-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const form = e.target;
    const id = store.selected;
    const fields = new FormData(form);
    const output = { id: fields.get('id').trim(), url: fields.get('url').trim(), preset: fields.get('preset') };
    for (const name of ['height', 'video_kbps']) {
      const value = fields.get(name);
      if (value) output[name] = Number(value);
    }
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      setRelay(await api('POST', `${relayPath(id)}/outputs`, output));
      showError($('output-error'), '');
      form.reset();
    } catch (err) {
      showError($('output-error'), err.message);
    } finally {
      button.disabled = false;
      render();
    }
  });

  async function removeOutput(relay, output) {
    const now = performance.now();
    if (!(confirming.relay === relay && confirming.id === output && now < confirming.until)) {
      Object.assign(confirming, { relay, id: output, until: now + CONFIRM_MS });
      render();
      setTimeout(render, CONFIRM_MS + 50);
      return;
    }
    Object.assign(confirming, { relay: null, id: null, until: 0 });
    try {
      await api('DELETE', `${relayPath(relay)}/outputs/${encodeURIComponent(output)}`);
      showError($('output-error'), '');
    } catch (e) {
      showError($('output-error'), `remove ${output}: ${e.message}`);
    }
    refreshRelay(relay);
  }

  // ---------------------------------------------------------------- score

  const INTEGER = /^-?\d+$/;

  function renderScore() {
    const id = store.selected;
    const entry = store.scores.get(id);
    const score = entry ? entry.view : null;
    const board = score ? score.scoreboard : null;
    $('scoreboard').hidden = !board;
    $('no-score').hidden = Boolean(board) || !entry;
    const source = $('score-source');
    if (!board) {
      source.textContent = '';
    } else {
      for (const side of ['home', 'away']) {
        $(`${side}-name`).textContent = board[side].name;
        $(`${side}-score`).textContent = board[side].score;
        const n = INTEGER.test(board[side].score) ? Number(board[side].score) : null;
        $(`${side}-plus`).disabled = busy.score || n === null;
        $(`${side}-minus`).disabled = busy.score || n === null || n <= 0;
      }
      $('score-extra').textContent = [board.period, board.clock, board.status].filter(Boolean).join(' · ');
      const from = score.source === 'manual' ? 'set by hand' : 'from the scores API';
      const age = grown(score.age, entry.at);
      source.textContent = `${from} · ${duration(age)} ago${score.stale ? ' · STALE' : ''}`;
      source.dataset.stale = String(Boolean(score.stale));
    }
    const problems = [];
    if (score && score.last_error) problems.push(`scores API: ${score.last_error}`);
    if (scoreError) problems.push(scoreError);
    showError($('score-error'), problems.join(' · '));
    $('score-form').querySelector('button').disabled = busy.score;
  }

  let scoreError = '';

  async function putScore(id, board) {
    busy.score = true;
    renderScore();
    try {
      setScore(id, await api('PUT', `${relayPath(id)}/score`, board));
      scoreError = '';
      return true;
    } catch (e) {
      scoreError = `not set: ${e.message}`;
      return false;
    } finally {
      busy.score = false;
      renderScore();
    }
  }

  for (const button of document.querySelectorAll('.step')) {
    button.addEventListener('click', () => {
      const id = store.selected;
      const entry = store.scores.get(id);
      const board = entry && entry.view.scoreboard;
      if (!board || busy.score) return;
      const side = button.dataset.side;
      const next = JSON.parse(JSON.stringify(board));
      next[side].score = Number(board[side].score) + Number(button.dataset.delta);
      putScore(id, next);
    });
  }

  // The form is filled from the scoreboard when it opens, not while the operator types. On the
  // summary's click, which runs before the details open: the toggle event comes later, as a
  // task of its own, and would overwrite whatever was typed in between.
  $('score-edit').querySelector('summary').addEventListener('click', () => {
    if ($('score-edit').open) return;
    const entry = store.scores.get(store.selected);
    const board = entry && entry.view.scoreboard;
    const form = $('score-form');
    form.home_name.value = board ? board.home.name : '';
    form.home_score.value = board ? board.home.score : '0';
    form.away_name.value = board ? board.away.name : '';
    form.away_score.value = board ? board.away.score : '0';
    form.period.value = (board && board.period) || '';
    form.clock.value = (board && board.clock) || '';
  });

  $('score-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const form = e.target;
    const id = store.selected;
    const entry = store.scores.get(id);
    const current = (entry && entry.view.scoreboard) || {};
    const value = (text) => (INTEGER.test(text.trim()) ? Number(text.trim()) : text.trim());
    const team = (side) =>
      Object.assign({}, current[side], {
        name: form[`${side}_name`].value.trim(),
        score: value(form[`${side}_score`].value),
      });
    const board = { home: team('home'), away: team('away') };
    if (form.period.value.trim()) board.period = form.period.value.trim();
    if (form.clock.value.trim()) board.clock = form.clock.value.trim();
    if (current.status) board.status = current.status;
    if (await putScore(id, board)) $('score-edit').open = false;
  });

  // ---------------------------------------------------------------- preview

  const player = { hls: null, relay: null, state: 'idle', timer: null, recovered: false };
  const video = $('preview');

  video.addEventListener('error', () => {
    const error = video.error;
    debug.videoErrors.push({ code: error ? error.code : 0, message: error ? error.message : '' });
  });

  function playerStatus(text) {
    $('player-status').textContent = text;
  }

  function stopPlayer(text) {
    clearTimeout(player.timer);
    if (player.hls) player.hls.destroy();
    player.hls = null;
    player.relay = null;
    player.state = 'idle';
    video.removeAttribute('src');
    video.load();
    const select = $('rendition');
    select.replaceChildren(new Option('Auto', '-1'));
    select.disabled = true;
    playerStatus(text);
  }

  /** Plays the selected relay while it is live; stops when it is not. */
  function updatePlayer(v) {
    if (v.state !== 'live') {
      if (player.relay !== null || player.state !== 'idle') stopPlayer(`No picture: the relay is ${v.state}.`);
      else playerStatus(`No picture: the relay is ${v.state}.`);
      return;
    }
    if (player.relay === v.id && player.state !== 'idle') return;
    startPlayer(v);
  }

  function startPlayer(v) {
    stopPlayer('Loading…');
    player.relay = v.id;
    player.state = 'loading';
    player.recovered = false;
    const url = v.hls.master;
    if (window.Hls && window.Hls.isSupported()) {
      const Hls = window.Hls;
      const hls = new Hls({
        // HLS may need the token too (auth.public_hls = false).
        xhrSetup: (xhr) => {
          if (token) xhr.setRequestHeader('Authorization', 'Bearer ' + token);
        },
        liveSyncDurationCount: 3,
      });
      player.hls = hls;
      hls.on(Hls.Events.MANIFEST_PARSED, (_, data) => {
        const select = $('rendition');
        select.replaceChildren(new Option('Auto', '-1'));
        data.levels.forEach((level, i) => {
          const name = level.height ? `${level.height}p` : level.name || `level ${i}`;
          select.append(new Option(`${name} · ${Math.round(level.bitrate / 1000)} kb/s`, String(i)));
        });
        select.disabled = data.levels.length < 2;
        video.play().catch(() => {});
      });
      hls.on(Hls.Events.LEVEL_SWITCHED, (_, data) => {
        player.state = 'playing';
        const level = hls.levels[data.level];
        const mode = hls.autoLevelEnabled ? 'auto' : 'fixed';
        playerStatus(`Playing ${level && level.height ? level.height + 'p' : ''} (${mode}) from ${url}`);
      });
      hls.on(Hls.Events.ERROR, (_, data) => {
        if (!data.fatal) return;
        debug.playerErrors.push({ type: data.type, details: data.details, at: video.currentTime });
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR && !player.recovered) {
          player.recovered = true;
          hls.recoverMediaError();
          return;
        }
        const relay = player.relay;
        stopPlayer(`No picture yet (${data.details}); trying again…`);
        player.state = 'waiting';
        player.relay = relay;
        player.timer = setTimeout(() => {
          player.state = 'idle';
          renderDetail();
        }, PLAYER_RETRY_MS);
      });
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
      // Safari plays HLS itself (it cannot send the token: keep auth.public_hls on for it).
      video.src = url;
      player.state = 'playing';
      video.play().catch(() => {});
      playerStatus(`Playing ${url} (the browser picks the rendition)`);
    } else {
      playerStatus('This browser cannot play HLS.');
    }
  }

  $('rendition').addEventListener('change', (e) => {
    if (player.hls) player.hls.currentLevel = Number(e.target.value);
  });

  // ---------------------------------------------------------------- queue

  let queueBusy = false;

  function renderQueue(v) {
    const entry = store.queues.get(v.id);
    $('queue').hidden = !v.queue || !entry;
    if ($('queue').hidden) return;
    const q = entry.view;
    const elapsed = (performance.now() - entry.at) / 1000;
    $('q-on-air').textContent = q.on_air ? q.on_air.name : 'nobody';
    $('q-left').textContent = q.on_air ? `${duration(Math.max(0, q.on_air.time_left - elapsed))} left` : '';
    $('q-block').textContent = q.block_kicked ? 'kicked casters are blocked' : 'kicked casters may rejoin';
    $('q-skip').disabled = queueBusy || !q.on_air;
    $('q-toggle').disabled = queueBusy;
    const timer = $('q-timer').elements.seconds;
    if (document.activeElement !== timer) timer.placeholder = String(Math.round(q.turn));
    const names = q.waiting.map((w) => w.name);
    reconcile(
      $('q-waiting'),
      q.waiting,
      (w) => w.name,
      (w) => {
        const li = el('li');
        li.append(el('span', 'name'));
        for (const [label, move] of [['↑', -1], ['↓', 1]]) {
          const b = el('button', 'step', label);
          b.type = 'button';
          b.dataset.move = String(move);
          b.setAttribute('aria-label', `${label === '↑' ? 'Up' : 'Down'} ${w.name}`);
          b.addEventListener('click', () => moveCaster(li.dataset.name, move));
          li.append(b);
        }
        const kick = el('button', 'danger', 'Kick');
        kick.type = 'button';
        kick.addEventListener('click', () => queueCommand('DELETE', `/queue/${encodeURIComponent(li.dataset.name)}`));
        li.append(kick);
        return li;
      },
      (li, w) => {
        li.dataset.name = w.name;
        li.dataset.connected = String(w.connected);
        li.querySelector('.name').textContent = w.connected ? w.name : `${w.name} (away)`;
        const [up, down] = li.querySelectorAll('button.step');
        up.disabled = queueBusy || names.indexOf(w.name) === 0;
        down.disabled = queueBusy || names.indexOf(w.name) === names.length - 1;
      },
    );
    $('q-empty').hidden = q.waiting.length > 0;
  }

  async function queueCommand(method, suffix, body) {
    const id = store.selected;
    queueBusy = true;
    renderDetail();
    try {
      const view = await api(method, relayPath(id) + suffix, body);
      if (view && view.waiting) store.queues.set(id, { view, at: performance.now() });
      showError($('q-error'), '');
    } catch (e) {
      showError($('q-error'), e.message);
    } finally {
      queueBusy = false;
      renderDetail();
    }
  }

  function moveCaster(name, move) {
    const entry = store.queues.get(store.selected);
    if (!entry) return;
    const order = entry.view.waiting.map((w) => w.name);
    const from = order.indexOf(name);
    const to = from + move;
    if (from < 0 || to < 0 || to >= order.length) return;
    order.splice(to, 0, order.splice(from, 1)[0]);
    queueCommand('PUT', '/queue/order', { order });
  }

  $('q-skip').addEventListener('click', () => queueCommand('POST', '/queue/skip'));
  $('q-toggle').addEventListener('click', async () => {
    const entry = store.queues.get(store.selected);
    if (!entry) return;
    await queueCommand('POST', '/queue/block', { block_kicked: !entry.view.block_kicked });
  });
  $('q-timer').addEventListener('submit', (e) => {
    e.preventDefault();
    const form = e.target;
    const seconds = Number(form.elements.seconds.value);
    queueCommand('POST', '/queue/timer', { seconds, reset: form.elements.restart.checked });
    form.reset();
  });

  // ---------------------------------------------------------------- graphics

  let graphicsBusy = false;

  /** A running clock's reading now, from the one the API gave at `at`. */
  function clockNow(layer, at) {
    const d = layer.data;
    const seconds = d.seconds || 0;
    if (!d.running) return seconds;
    const elapsed = Math.floor((performance.now() - at) / 1000);
    return d.direction === 'up' ? seconds + elapsed : Math.max(0, seconds - elapsed);
  }

  function clockText(s) {
    const h = Math.floor(s / 3600);
    const m = Math.floor(s / 60) % 60;
    const pad = (n) => String(n).padStart(2, '0');
    return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
  }

  /** The form that edits a layer's text, by kind: [field, label] pairs. */
  const TEXT_FIELDS = {
    lower_third: [['title', 'Title'], ['subtitle', 'Subtitle']],
    text: [['text', 'Text']],
  };

  function renderGraphics(v) {
    const entry = store.graphics.get(v.id);
    $('graphics').hidden = !v.graphics || !entry || entry.layers.length === 0;
    if ($('graphics').hidden) return;
    reconcile(
      $('g-layers'),
      entry.layers,
      (l) => l.id,
      (l) => {
        const li = el('li');
        const head = el('div', 'g-head');
        const toggle = el('button', 'g-toggle');
        toggle.type = 'button';
        toggle.addEventListener('click', () => {
          const layer = currentLayer(li.dataset.key);
          if (layer) putLayer(layer.id, { visible: !layer.visible });
        });
        head.append(el('strong', 'g-id', l.id), el('span', 'muted g-kind', l.kind.replace('_', ' ')), el('span', 'g-state'), toggle);
        li.append(head);
        const fields = TEXT_FIELDS[l.kind];
        if (fields) {
          const form = el('form', 'grid-form g-text');
          for (const [name, label] of fields) {
            const input = el('input');
            input.name = name;
            input.maxLength = 200;
            input.autocomplete = 'off';
            const lab = el('label', null, `${label} `);
            lab.append(input);
            form.append(lab);
          }
          const save = el('button', null, 'Save');
          save.type = 'submit';
          form.append(save);
          form.addEventListener('submit', (e) => {
            e.preventDefault();
            const data = {};
            for (const [name] of fields) {
              const value = form.elements[name].value;
              data[name] = value === '' && name === 'subtitle' ? null : value;
            }
            putLayer(li.dataset.key, { data });
          });
          li.append(form);
        }
        if (l.kind === 'clock') {
          const row = el('div', 'g-clock');
          const time = el('span', 'g-time');
          const run = el('button', 'g-run');
          run.type = 'button';
          run.addEventListener('click', () => {
            const layer = currentLayer(li.dataset.key);
            if (layer) putLayer(layer.id, { data: { running: !layer.data.running } });
          });
          const form = el('form', 'g-set');
          const input = el('input');
          input.name = 'seconds';
          input.type = 'number';
          input.min = '0';
          input.max = '864000';
          input.required = true;
          input.placeholder = 'seconds';
          input.setAttribute('aria-label', 'Clock seconds');
          const set = el('button', null, 'Set');
          set.type = 'submit';
          form.append(input, set);
          form.addEventListener('submit', (e) => {
            e.preventDefault();
            putLayer(li.dataset.key, { data: { seconds: Number(input.value) } });
            form.reset();
          });
          row.append(time, run, form);
          li.append(row);
        }
        return li;
      },
      (li, l) => {
        li.dataset.visible = String(l.visible);
        li.querySelector('.g-state').textContent = l.visible ? 'on screen' : 'hidden';
        const toggle = li.querySelector('.g-toggle');
        toggle.textContent = l.visible ? 'Hide' : 'Show';
        toggle.disabled = graphicsBusy;
        const form = li.querySelector('form.g-text');
        if (form && !form.contains(document.activeElement)) {
          for (const input of form.querySelectorAll('input')) input.value = l.data[input.name] || '';
        }
        const time = li.querySelector('.g-time');
        if (time) {
          time.textContent = clockText(clockNow(l, entry.at));
          const run = li.querySelector('.g-run');
          run.textContent = l.data.running ? 'Stop' : 'Start';
          run.disabled = graphicsBusy;
        }
      },
    );
  }

  function currentLayer(id) {
    const entry = store.graphics.get(store.selected);
    return entry && entry.layers.find((l) => l.id === id);
  }

  async function putLayer(layer, body) {
    const id = store.selected;
    graphicsBusy = true;
    renderDetail();
    try {
      await api('PUT', `${relayPath(id)}/graphics/${encodeURIComponent(layer)}`, body);
      showError($('g-error'), '');
      await refreshGraphics(id);
    } catch (e) {
      showError($('g-error'), e.message);
    } finally {
      graphicsBusy = false;
      renderDetail();
    }
  }

  // ---------------------------------------------------------------- thumbnails

  /** id -> the object URL of the relay's thumbnail shown now. */
  const thumbs = new Map();
  const THUMBNAIL_MS = 4000;
  const THUMBNAIL_ROWS = 24;

  /** Fetches the thumbnails of the first rows shown (with the token, hence as blobs). */
  async function refreshThumbnails() {
    for (const li of [...$('relays').children].slice(0, THUMBNAIL_ROWS)) {
      const id = li.dataset.relay;
      const entry = store.relays.get(id);
      const img = li.querySelector('.r-thumb');
      if (!img) continue;
      if (!entry || entry.view.state === 'stopped' || entry.view.transcode === false) {
        img.hidden = true;
        continue;
      }
      try {
        const r = await fetch(relayPath(id) + '/thumbnail.jpg', { headers: authHeaders(), cache: 'no-store' });
        if (!r.ok) continue;
        const url = URL.createObjectURL(await r.blob());
        const old = thumbs.get(id);
        thumbs.set(id, url);
        img.src = url;
        img.hidden = false;
        if (old) URL.revokeObjectURL(old);
      } catch {
        // The next round tries again.
      }
    }
  }

  // ---------------------------------------------------------------- start

  // Durations tick between events.
  setInterval(renderDetail, 1000);
  setInterval(refreshThumbnails, THUMBNAIL_MS);
  loadAll().catch((e) => notify(`Cannot read the relays: ${e.message}`));
  followEvents();
})();
