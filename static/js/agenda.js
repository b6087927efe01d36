/* The agenda grid, made handier (templates/scheduling/_grid.html, scheduling/grid.py).

   Everything here refines what already works without it: free time is a link to the booking
   page, status buttons are form buttons, #now is an anchor, moving is the appointment page's
   form. This script:
   - opens the grid at now (an hour before it), when the grid shows today;
   - books at the exact row clicked in a free piece (the link books at the piece's start);
   - lets the front desk drag a booked appointment to another time or practitioner: a
     confirmation, then the move is sent (scheduling:drag_move, JSON); the page reloads when
     it is done, the block goes back and the refusal is shown when it is not.

   Loaded with <script src defer> under a strict CSP: no inline code, no eval, no inline
   styles (blocks are placed with the grid's .rs-N / .re-N classes). */
(function () {
  "use strict";

  var agenda = document.querySelector(".agenda[data-rows]");
  if (!agenda) {
    return;
  }
  var firstMinute = Number(agenda.dataset.first);
  var slot = Number(agenda.dataset.slot);
  var rows = Number(agenda.dataset.rows);

  function headHeight() {
    var head = agenda.querySelector(".agenda-head");
    return head ? head.offsetHeight : 0;
  }

  // --- Open at now -------------------------------------------------------------------------
  var anchor = document.getElementById("now");
  if (anchor) {
    var offset = anchor.getBoundingClientRect().top - agenda.getBoundingClientRect().top - headHeight();
    agenda.scrollTop += offset;
  }

  // --- Rows and times ----------------------------------------------------------------------
  function rowAt(column, clientY) {
    var box = column.getBoundingClientRect();
    var row = Math.floor(((clientY - box.top) / box.height) * rows) + 1;
    return Math.min(Math.max(row, 1), rows);
  }

  function clock(row) {
    var minutes = firstMinute + (row - 1) * slot;
    var hours = Math.floor(minutes / 60);
    var rest = minutes % 60;
    return (hours < 10 ? "0" : "") + hours + ":" + (rest < 10 ? "0" : "") + rest;
  }

  function span(element) {
    var start = /(?:^|\s)rs-(\d+)(?:\s|$)/.exec(element.className);
    var end = /(?:^|\s)re-(\d+)(?:\s|$)/.exec(element.className);
    return start && end ? [Number(start[1]), Number(end[1])] : null;
  }

  function placed(element, first, length) {
    var kept = element.className.split(/\s+/).filter(function (name) {
      return name && !/^r[se]-\d+$/.test(name);
    });
    kept.push("rs-" + first, "re-" + (first + length));
    element.className = kept.join(" ");
  }

  // --- Book at the row clicked -------------------------------------------------------------
  agenda.addEventListener("click", function (event) {
    var link = event.target.closest("a.free");
    if (!link || event.detail === 0) {
      return; // a keyboard activation books at the piece's start, as the link says
    }
    var column = link.closest(".col");
    var piece = span(link);
    if (!column || !piece) {
      return;
    }
    var row = Math.min(Math.max(rowAt(column, event.clientY), piece[0]), piece[1] - 1);
    var url = new URL(link.href, window.location.href);
    url.searchParams.set("start", column.dataset.day + "T" + clock(row));
    link.href = url.pathname + url.search;
  });

  // --- Drag to move ------------------------------------------------------------------------
  var moveUrl = agenda.dataset.move;
  var dialog = document.querySelector(".move-dialog");
  var alertBox = document.querySelector(".grid-alert");
  if (!moveUrl || !dialog || !alertBox || typeof dialog.showModal !== "function") {
    return;
  }
  var form = dialog.querySelector("form");
  var question = dialog.querySelector(".move-question");
  var alertText = alertBox.querySelector(".grid-alert-text");
  var retry = alertBox.querySelector(".grid-alert-retry");
  var dragged = null; // {block, grab (px from the block's top), length (rows)}
  var pending = null; // {block, parent, next, className, column, row}
  var preview = document.createElement("div");
  preview.className = "drop-preview";
  preview.setAttribute("aria-hidden", "true");

  function idOf(block) {
    var found = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/.exec(block.getAttribute("href") || "");
    return found ? found[0] : null;
  }

  function freshKey() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") {
      return window.crypto.randomUUID();
    }
    var bytes = new Uint8Array(24);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return (b < 16 ? "0" : "") + b.toString(16); }).join("");
  }

  function fill(template, words) {
    return template.replace(/%\((\w+)\)s/g, function (whole, name) {
      return Object.prototype.hasOwnProperty.call(words, name) ? words[name] : whole;
    });
  }

  function targetRow(column, clientY) {
    var rowHeight = column.getBoundingClientRect().height / rows;
    var row = rowAt(column, clientY - dragged.grab + rowHeight / 2);
    return Math.min(row, rows + 1 - dragged.length);
  }

  function movable(block) {
    return block && block.classList.contains("appt") && block.classList.contains("st-booked") && idOf(block);
  }

  agenda.querySelectorAll(".appt.st-booked").forEach(function (block) {
    block.setAttribute("draggable", "true");
  });

  agenda.addEventListener("dragstart", function (event) {
    var block = event.target.closest && event.target.closest(".appt");
    var rowsOf = block && span(block);
    if (!movable(block) || !rowsOf || pending) {
      return;
    }
    dragged = {
      block: block,
      grab: event.clientY - block.getBoundingClientRect().top,
      length: rowsOf[1] - rowsOf[0],
    };
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", idOf(block));
    block.classList.add("dragging");
  });

  agenda.addEventListener("dragover", function (event) {
    var column = dragged && event.target.closest && event.target.closest(".col");
    if (!column) {
      return;
    }
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    placed(preview, targetRow(column, event.clientY), dragged.length);
    if (preview.parentNode !== column) {
      column.appendChild(preview);
    }
  });

  function dragDone() {
    if (dragged) {
      dragged.block.classList.remove("dragging");
    }
    dragged = null;
    preview.remove();
  }

  agenda.addEventListener("dragend", dragDone);

  agenda.addEventListener("drop", function (event) {
    var column = dragged && event.target.closest && event.target.closest(".col");
    if (!column) {
      return;
    }
    event.preventDefault();
    var block = dragged.block;
    var row = targetRow(column, event.clientY);
    var length = dragged.length;
    dragDone();
    ask(block, column, row, length);
  });

  function ask(block, column, row, length) {
    var who = block.querySelector(".who");
    question.textContent = fill(dialog.dataset.question, {
      patient: who ? who.textContent : "",
      time: clock(row),
      column: column.dataset.label,
    });
    form.elements.date.value = column.dataset.day;
    form.elements.time.value = clock(row);
    form.elements.practitioner.value = column.dataset.prac;
    form.elements.submission_key.value = freshKey();
    form.action = moveUrl.replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/, idOf(block));
    pending = {block: block, column: column, row: row, length: length};
    dialog.returnValue = "";
    dialog.showModal();
  }

  dialog.querySelector(".move-cancel").addEventListener("click", function () {
    dialog.close("cancel");
  });

  dialog.addEventListener("close", function () {
    if (dialog.returnValue !== "sent") {
      pending = null;
    }
  });

  function putBack(move) {
    move.block.className = move.className;
    move.block.classList.remove("pending");
    move.parent.insertBefore(move.block, move.next);
  }

  function refused(move, message, nextFree) {
    putBack(move);
    alertText.textContent = message;
    retry.hidden = true;
    if (nextFree && nextFree.date === move.column.dataset.day) {
      retry.textContent = fill(alertBox.dataset.retry, {time: nextFree.time});
      retry.hidden = false;
      retry.onclick = function () {
        alertBox.hidden = true;
        var hours = Number(nextFree.time.slice(0, 2));
        var minutes = Number(nextFree.time.slice(3, 5));
        var row = Math.floor((hours * 60 + minutes - firstMinute) / slot) + 1;
        ask(move.block, move.column, row, move.length);
      };
    }
    alertBox.hidden = false;
    alertBox.scrollIntoView({block: "nearest"});
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!pending) {
      return;
    }
    var move = pending;
    pending = null;
    dialog.close("sent");
    // Shown where it goes while the server decides; put back if it refuses.
    move.parent = move.block.parentNode;
    move.next = move.block.nextSibling;
    move.className = move.block.className;
    placed(move.block, move.row, move.length);
    move.block.classList.add("pending");
    move.column.appendChild(move.block);
    alertBox.hidden = true;
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: {Accept: "application/json"},
      credentials: "same-origin",
    })
      .then(function (response) {
        return response.json().then(function (answer) {
          return {status: response.status, answer: answer};
        });
      })
      .then(function (result) {
        if (result.answer.ok) {
          window.location.reload();
        } else {
          refused(move, result.answer.message, result.answer.next_free);
        }
      })
      .catch(function () {
        refused(move, alertBox.dataset.failed, null);
      });
  });

  alertBox.querySelector(".grid-alert-close").addEventListener("click", function () {
    alertBox.hidden = true;
  });
})();
